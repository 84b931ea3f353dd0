"""The layout's promises: the project's own imports have no cycle, and the web process loads no worker side."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, inbound_form, sign, waiting_drains

PACKAGES = ("config", "core", "gateway", "workers", "cli", "sandbox")
# What the web must never load (design.md, "Where code lives"): the flow, the UponAI client, the
# outside systems' HTTP libraries, and any module of the worker side at all.
FORBIDDEN_IN_WEB = ("workers", "requests", "twilio.rest")


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (a package by its ``__init__``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` imports the module a.b when there is one, else a name of a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_cycles() -> list[list[str]]:
    """The strongly connected groups of more than one module in the import graph (Tarjan)."""
    modules = project_modules()
    graph = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_the_projects_own_imports_have_no_cycle():
    assert len(project_modules()) > 40  # the walk found the packages
    assert import_cycles() == []


def test_shared_and_web_modules_import_only_what_their_room_allows():
    modules = project_modules()
    allowed = {"config": {"config"}, "core": {"config", "core"}, "gateway": {"config", "core", "gateway"}}
    trespasses = [(name, target) for name, path in modules.items() if name.split(".")[0] in allowed
                  for target in sorted(imported_modules(name, path, set(modules)))
                  if target.split(".")[0] not in allowed[name.split(".")[0]]]
    assert trespasses == []


# Runs in a fresh interpreter: build the app, serve what a web process serves, list what got imported.
WEB_PROCESS = """
import json, sys
from gateway import create_app
env, form, signature = json.loads(sys.stdin.read())
client = create_app(env).test_client()
answers = [
    client.post("/twilio/sms", data=form, headers={"X-Twilio-Signature": signature}).status_code,
    client.get("/healthz").status_code,
    client.get("/readyz").status_code,
    client.get("/metrics").status_code,
    client.get("/admin/failed", headers={"Authorization": "Bearer layout-admin-token"}).status_code,
]
print(json.dumps({"answers": answers, "modules": sorted(sys.modules)}))
"""


def test_the_web_process_loads_no_worker_side(env, queue):
    env = {**env, "ADMIN_API_TOKEN": "layout-admin-token"}
    form = inbound_form("layout check")
    signature = sign("https://sms.example.com/twilio/sms", form)
    done = subprocess.run([sys.executable, "-c", WEB_PROCESS], input=json.dumps([env, form, signature]),
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    # The inbound text was accepted (so the webhook's whole path ran), /readyz answered (503: no worker).
    assert seen["answers"] == [200, 200, 503, 200, 200]
    assert len(waiting_drains(queue)) == 1
    loaded = [module for module in seen["modules"]
              if any(module == name or module.startswith(name + ".") for name in FORBIDDEN_IN_WEB)]
    assert loaded == []
    assert {"gateway.twilio_webhooks", "core.queues", "twilio.request_validator"} <= set(seen["modules"])


# -- one reader of the environment ----------------------------------------------------------------

# Writing the environment for child processes (or for a library that reads it, like prometheus-client's
# PROMETHEUS_MULTIPROC_DIR) is fine; reading a setting anywhere but config/ is not.
ENVIRONMENT_READERS = {"environ", "environb", "getenv", "getenvb"}
ENTRY_FILES = ("gunicorn.conf.py",)


def environment_reads(path: Path, root: Path = ROOT) -> list[str]:
    """``path:line: code`` of each place in ``path`` that reads the environment or ``.env`` without config's API."""
    tree = ast.parse(path.read_text(), str(path))
    written = {id(node.value) for node in ast.walk(tree)
               if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_READERS and id(node) not in written
                and isinstance(node.value, ast.Name) and node.value.id == "os"):
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [node] if {alias.name for alias in node.names} & ENVIRONMENT_READERS else []
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "config":
            found += [node] if any(alias.name.startswith("_") for alias in node.names) else []  # config's privates
        elif isinstance(node, ast.ImportFrom | ast.Import):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            found += [node] if any((name or "").split(".")[0] == "dotenv" for name in modules) else []
    lines = path.read_text().splitlines()
    return [f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
            for node in sorted(found, key=lambda node: node.lineno)]


def test_environment_reads_are_found_and_writes_are_not(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import os\nfrom dotenv import dotenv_values\nos.environ['A'] = 'b'\n"
                      "x = os.environ.get('A')\ny = os.getenv('A')\nfrom os import environ\n"
                      "from config.settings import _read_dotenv\nz = request.environ\n")
    found = environment_reads(source, tmp_path)
    assert [line.split(":")[1] for line in found] == ["2", "4", "5", "6", "7"]


def test_only_config_reads_the_environment():
    files = [path for package in PACKAGES if package != "config" for path in sorted((ROOT / package).rglob("*.py"))]
    files += [ROOT / name for name in ENTRY_FILES]
    assert len(files) > 40
    assert [line for path in files for line in environment_reads(path)] == []


def key_kinds_in_code() -> dict[str, str]:
    """Every kind of Redis key the code names (the first part of a ``key(...)`` call, a literal), with a place."""
    kinds = {}
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "key"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                kinds.setdefault(node.args[0].value, f"{name}:{node.lineno}")
    return kinds


def test_every_kind_of_key_says_what_it_holds_so_an_erase_cannot_forget_it():
    """An erase derives what it deletes from KEY_KINDS (issue 23, item 5): a kind of key the table does not name
    would be left behind, with whatever number or words it holds."""
    from core.state.keys import KEY_KINDS

    used = key_kinds_in_code()
    assert {"conv", "msg", "idle-due"} <= set(used)  # the scan finds the calls it is meant to find
    assert {kind: where for kind, where in used.items() if kind not in KEY_KINDS} == {}


# -- no project-private name used across modules ----------------------------------------------------

CHECKED_FOR_PRIVATES = (*PACKAGES, "bench", "tests")


def private_names_used(path: Path, root: Path = ROOT) -> list[str]:
    """``path:line: code`` of each ``from <project module> import _name`` and ``<project module>._name`` in ``path``."""
    project = {*PACKAGES, "bench", "tests"}
    tree = ast.parse(path.read_text(), str(path))
    modules = set()  # names bound to project modules by ``import x.y [as z]``
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                        if alias.name.split(".")[0] in project}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in project:
            modules |= {alias.asname or alias.name for alias in node.names}  # a submodule imported by name, too
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in project:
            found += [node] if any(_is_private(alias.name) for alias in node.names) else []
        elif (isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.value, ast.Name)
              and node.value.id in modules):
            found.append(node)
    lines = path.read_text().splitlines()
    return [f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
            for node in sorted(found, key=lambda node: node.lineno)]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_private_names_used_across_modules_are_found(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("from workers.worker import _loop, run\nfrom workers import worker\nimport core.state as st\n"
                      "worker._loop()\nst._scan\nself._own\nfrom redis import _private\nfrom os import _exit\n")
    assert [line.split(":")[1] for line in private_names_used(source, tmp_path)] == ["1", "4", "5"]


def test_no_project_private_name_is_used_across_modules():
    files = [path for package in CHECKED_FOR_PRIVATES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 100
    assert [line for path in files for line in private_names_used(path)] == []
