"""The README and docs/ render as written (issue 24, item 1): every table is whole, every relative link lands.

Parsed with markdown-it-py (CommonMark, with the GFM table extension) as GitHub's renderer parses them: a table row
that is not indented like its neighbours inside a list item ends the table there, and the rest of the table becomes
a paragraph of pipes; a link to a heading that moved is a dead anchor. Both are invisible in the source and obvious
on the rendered page, so they are checked here.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def tokens_of(path: Path) -> list[Token]:
    return parser().parse(path.read_text())


def name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def cells(line: str) -> list[str]:
    """A table line's cells as GFM splits them: on every pipe not escaped with a backslash (code spans included)."""
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return re.split(r"(?<!\\)\|", inner)


def table_problems(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    tokens = tokens_of(path)
    problems = []
    in_tables: set[int] = set()
    in_code: set[int] = set()
    for token in tokens:
        if token.type in ("fence", "code_block", "html_block") and token.map:
            in_code.update(range(*token.map))
        if token.type != "table_open" or not token.map:
            continue
        start, end = token.map
        in_tables.update(range(start, end))
        width = len(cells(lines[start]))
        for number in range(start, end):
            found = len(cells(lines[number]))
            if found != width:
                problems.append(f"{name(path)}:{number + 1}: {found} cells, the header has {width}")
    # A line that starts with a pipe, outside code, that no table holds: a row the table lost (it ended earlier).
    for number, line in enumerate(lines):
        if line.lstrip().startswith("|") and number not in in_tables and number not in in_code:
            problems.append(f"{name(path)}:{number + 1}: looks like a table row but is not in a table: "
                            f"{line.strip()[:60]}")
    return problems


def plain_text(inline: Token) -> str:
    return "".join(child.content for child in inline.children or () if child.type in ("text", "code_inline"))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, spaces, - and _ kept),
    each space a hyphen."""
    slug = heading.strip().lower()
    slug = "".join(ch for ch in slug if ch.isalnum() or ch in " -_")
    return slug.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    tokens = tokens_of(path)
    anchors, seen = set(), {}
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = github_slug(plain_text(tokens[index + 1]))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    # Explicit anchors written as HTML (<a id="..."></a>) count too.
    anchors.update(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", path.read_text()))
    return anchors


def links_of(path: Path) -> list[str]:
    found = []
    for token in tokens_of(path):
        for child in token.children or ():
            if child.type == "link_open":
                found.append(str(child.attrs["href"]))
            elif child.type == "image":
                found.append(str(child.attrs["src"]))
    return found


def link_problems(path: Path) -> list[str]:
    problems = []
    for href in links_of(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", href, re.IGNORECASE) or href.startswith("//"):
            continue  # an address elsewhere (https:, mailto:): not checked here, the tests go nowhere
        target_part, _, anchor = href.partition("#")
        target = (path.parent / unquote(target_part)).resolve() if target_part else path
        if not target.exists():
            problems.append(f"{name(path)}: link {href!r}: {target_part} does not exist")
            continue
        if anchor and target.suffix == ".md" and unquote(anchor) not in anchors_of(target):
            problems.append(f"{name(path)}: link {href!r}: no heading #{anchor} in {name(target)}")
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=name)
def test_every_table_renders_whole(path):
    assert table_problems(path) == []


@pytest.mark.parametrize("path", DOCUMENTS, ids=name)
def test_every_relative_link_and_anchor_lands(path):
    assert link_problems(path) == []


def test_the_checks_catch_a_broken_table_and_a_dead_link(tmp_path):
    """What the checks are for, on a page that has both faults: a row not indented like the rows of a table
    inside a list item (CommonMark ends the table there), a row with a cell too many, and dead links."""
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n## Metrics\n\n- metrics:\n\n  | metric | type |\n  |---|---|\n  | `a` | counter |\n"
                    "| `b` | counter |\n  | `c` | gauge |\n\n| x | y |\n|---|---|\n| 1 | 2 | 3 |\n\n"
                    "[ok](#metrics) [gone](#settings) [missing](nowhere.md) [self](page.md#a-page)\n")
    found = table_problems(page)
    assert any(":10: looks like a table row but is not in a table" in problem for problem in found), found
    assert any(":15: 3 cells, the header has 2" in problem for problem in found), found
    dead = link_problems(page)
    assert len(dead) == 2 and "#settings" in dead[0] and "nowhere.md" in dead[1], dead


def test_github_slugs():
    # As GitHub makes them: code spans keep their text, punctuation goes, spaces become hyphens.
    assert github_slug("Pointing a Twilio number at the gateway (Twilio console)") == \
        "pointing-a-twilio-number-at-the-gateway-twilio-console"
    assert github_slug("Data retention and erasure") == "data-retention-and-erasure"
    assert github_slug("`POST /admin/sms`") == "post-adminsms"
    assert github_slug("Where code lives") == "where-code-lives"


def test_the_readme_is_read_first():
    """The README is what a person reads first: short, the two commands word for word, the reference in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "\nmake run\n" in readme and "\nmake test\n" in readme
    linked = {href.partition("#")[0] for href in links_of(ROOT / "README.md")}
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in linked, f"the README does not link docs/{doc.name}"
