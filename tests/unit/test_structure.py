"""The code's shape, checked from its source: no import cycles (imports inside functions
included), an import inside a function says why, docs/architecture.md's module table names every
package and what each may import, and comments keep decisions and links, not measurements.

The helpers live in tests/support/structure.py; the tests at the bottom check them on small
fixtures, so a failure above is about the code, not the parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import structure
from tests.support.structure import REPO, Import, Module, TableError, TableRow

ARCHITECTURE = REPO / "docs" / "architecture.md"
RESULTS = REPO / "benchmarks" / "RESULTS.md"

# Figures the measurement check lets through, as (path, a fragment of the line): a reason each.
# Only a setting or a limit the code chooses belongs here; a measured figure goes to
# benchmarks/RESULTS.md and the comment links to its heading.
ALLOWED_FIGURES: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return structure.project_modules()


@pytest.fixture(scope="module")
def edges(modules: dict[str, Module]) -> list[Import]:
    return structure.imports(modules)


def table_rows() -> list[TableRow]:
    try:
        return structure.module_table(ARCHITECTURE.read_text(encoding="utf-8"))
    except TableError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)  # outside the handler, so the report shows the message alone


@pytest.fixture(scope="module")
def production_texts() -> list[structure.Text]:
    return [text for path in structure.production_files() for text in structure.comments_and_docstrings(path)]


def test_no_module_imports_itself_through_others(edges: list[Import]) -> None:
    cycles = structure.import_cycles(edges)
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(cycles)


def test_an_import_inside_a_function_names_its_cause(modules: dict[str, Module]) -> None:
    found = structure.function_imports_without_cause(modules)
    assert not found, (
        "imports inside a function need a comment on the line or the line above naming why "
        "(an optional dependency, a heavy module at start-up, a cycle broken on purpose):\n"
        + "\n".join(found)
    )


def test_the_module_table_names_only_packages_that_exist() -> None:
    named = [name for row in table_rows() for name in row.packages]
    missing = [name for name in named if not (name.endswith("/") and any((REPO / name).glob("*.py")))]
    assert not missing, (
        "the module table names packages that are not directories with Python files "
        f"({', '.join(sorted(structure.package_directories()))} are): {missing}"
    )


def test_the_module_table_names_every_package() -> None:
    named = {name for row in table_rows() for name in row.packages}
    absent = sorted(structure.package_directories() - named)
    assert not absent, f"packages with no row in docs/architecture.md's module table: {absent}"


def test_packages_import_only_what_the_module_table_allows(
    modules: dict[str, Module], edges: list[Import]
) -> None:
    rows = table_rows()
    if all(row.may_import is None for row in rows):
        pytest.fail('the module table has no "May import" column to check imports against', pytrace=False)
    found = structure.forbidden_imports(rows, modules, edges, structure.third_party_imports(modules))
    assert not found, "imports the module table does not allow:\n" + "\n".join(found)


def test_comments_keep_decisions_not_measurements(production_texts: list[structure.Text]) -> None:
    found = structure.measurements(production_texts, ALLOWED_FIGURES)
    assert not found, (
        "measured figures in comments or docstrings (put them in benchmarks/RESULTS.md and link "
        "its heading):\n" + "\n".join(found)
    )


def test_links_into_the_results_point_at_a_heading(production_texts: list[structure.Text]) -> None:
    results_anchors = structure.anchors(RESULTS.read_text(encoding="utf-8"))
    found = structure.dangling_links(production_texts, "RESULTS.md", results_anchors, anchor_required=True)
    assert not found, (
        "mentions of RESULTS.md need a #anchor of one of its headings (a section number moves "
        "when sections do):\n" + "\n".join(found)
    )


def test_links_into_the_architecture_point_at_a_heading(production_texts: list[structure.Text]) -> None:
    architecture_anchors = structure.anchors(ARCHITECTURE.read_text(encoding="utf-8"))
    found = structure.dangling_links(
        production_texts, "architecture.md", architecture_anchors, anchor_required=False
    )
    assert not found, "links into docs/architecture.md whose #anchor no heading has:\n" + "\n".join(found)


# ---- the helpers, on fixtures


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/a.py": "from engine import b\n",
            "engine/b.py": "def f():\n    from . import c  # late\n",
            "engine/c.py": "from .a import name\n",
            "api/__init__.py": "",
            "api/x.py": "import api.x\n",
        },
    )
    modules = structure.project_modules(repo)
    cycles = structure.import_cycles(structure.imports(modules, repo))
    assert cycles == ["api.x -> api.x", "engine.a -> engine.b -> engine.c -> engine.a"]


def test_type_checking_imports_and_parent_packages_make_no_edge(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "engine/__init__.py": "from engine.sessions import shard\n",
            "engine/sessions/__init__.py": "",
            "engine/sessions/shard.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from engine.sessions import late\n"
                "else:\n    import json\n"
                "from ..errors import Boom\n"
            ),
            "engine/sessions/late.py": "from engine.sessions.shard import x\n",
            "engine/errors.py": "import fastapi.responses\n",
            "client/session_engine_client/__init__.py": "from ._calls import RetryPolicy\n",
            "client/session_engine_client/_calls.py": "",
        },
    )
    modules = structure.project_modules(repo)
    edges = {(edge.importer, edge.target) for edge in structure.imports(modules, repo)}
    assert edges == {
        ("engine", "engine.sessions.shard"),
        ("engine.sessions.shard", "engine.errors"),
        ("engine.sessions.late", "engine.sessions.shard"),
        ("session_engine_client", "session_engine_client._calls"),
    }
    assert structure.import_cycles(structure.imports(modules, repo)) == []
    assert structure.third_party_imports(modules, repo)["engine.errors"] == [("fastapi", 1)]


def test_an_import_in_a_function_needs_a_comment_that_is_not_a_pragma(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "engine/__init__.py": "import json\n",
            "engine/m.py": (
                "def a():\n"
                "    # heavy at start-up\n"
                "    import torch\n"
                "    import numpy\n"
                "\n"
                "    import faiss\n"
                "def b():\n"
                "    import ray  # type: ignore[import]\n"
                "    from x import (  # optional\n        y,\n    )\n"
            ),
        },
    )
    assert structure.function_imports_without_cause(structure.project_modules(repo), repo) == [
        "engine/m.py:6",
        "engine/m.py:8",
    ]


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("# 1.2 ms a call, 48,000 ops/s", True),
        ("a dataclass would be pickled: 20 µs more", True),
        ("# three times faster: 3 times faster than before", True),
        ("# 4x faster than the loop", True),
        ("# 30 % of the gateway's time", True),
        ("# writes 200 MB/s", True),
        ("a record holds at most 256 vectors", False),
        ("# files are 0600, directories 0700", False),
        ("# retry after 5 s by default", False),
        ("# FastAPI 0.16x matches an included router", False),
        ("# timeout_ms is the setting", False),
        ("# see benchmarks/RESULTS.md#8-memory-queries", False),
    ],
)
def test_measured_figures_are_told_from_settings(line: str, flagged: bool) -> None:
    text = structure.Text("engine/x.py", 1, line)
    assert bool(structure.measurements([text], {})) is flagged
    assert structure.measurements([text], {("engine/x.py", line[3:12]): "a reason"}) == []


def test_anchors_follow_github() -> None:
    markdown = (
        "# Performance\n"
        "## 13. Closing the gap, and Redis (the anchor)\n"
        "### 5. Summarizer batch cap 4 -> 16 (f0515b4)\n"
        "### What limits append now\n"
        "```\n## not a heading\n```\n"
        "### What limits append now\n"
        "### 1. The hot routes skip it (`api/direct.py`)\n"
    )
    assert structure.anchors(markdown) == {
        "performance",
        "13-closing-the-gap-and-redis-the-anchor",
        "5-summarizer-batch-cap-4---16-f0515b4",
        "what-limits-append-now",
        "what-limits-append-now-1",
        "1-the-hot-routes-skip-it-apidirectpy",
    }
    texts = [
        structure.Text("a.py", 1, "# see benchmarks/RESULTS.md#what-limits-append-now-1"),
        structure.Text("a.py", 2, "# see benchmarks/RESULTS.md §13.2"),
        structure.Text("a.py", 3, "# see benchmarks/RESULTS.md#13-closing-the-gap"),
    ]
    assert structure.dangling_links(
        texts, "RESULTS.md", structure.anchors(markdown), anchor_required=True
    ) == [
        "a.py:2: # see benchmarks/RESULTS.md §13.2",
        "a.py:3: # see benchmarks/RESULTS.md#13-closing-the-gap",
    ]
    assert structure.dangling_links(
        texts, "RESULTS.md", structure.anchors(markdown), anchor_required=False
    ) == [
        "a.py:3: # see benchmarks/RESULTS.md#13-closing-the-gap",
    ]


FIXTURE_DOC = """\
# Architecture

## Tests

Some text.

## Module table

| Package | Owns | May import | Must not import |
|---|---|---|---|
| `engine/` | errors, config | nothing | `fastapi`, `ray` |
| `engine/sessions/` | the session store | `engine/`, `engine/storage/` | `fastapi` |
| `engine/storage/` | files | `engine/errors.py` | |
| `api/`, `api/routes/` | the gateway | `engine/*` | `engine/runtime/` |
| `session_engine/` | the command | every package | FastAPI, Ray (only through `engine/runtime/`) |

## After
| `ignored/` | | | |
"""


def test_the_module_table_parser_reads_each_column() -> None:
    assert structure.module_table(FIXTURE_DOC) == [
        TableRow(("engine/",), (), ("fastapi", "ray")),
        TableRow(("engine/sessions/",), ("engine/", "engine/storage/"), ("fastapi",)),
        TableRow(("engine/storage/",), ("engine/errors.py",), ()),
        TableRow(("api/", "api/routes/"), ("engine/*",), ("engine/runtime/",)),
        TableRow(("session_engine/",), ("*",), ("engine/runtime/", "fastapi", "ray")),
    ]


def test_a_missing_module_table_is_an_error_that_says_so() -> None:
    with pytest.raises(TableError, match="Module table"):
        structure.module_table("# Architecture\n\n## Code layout\n")
    with pytest.raises(TableError, match="no markdown table"):
        structure.module_table("## Module table\n\nTo come.\n")


def test_imports_are_checked_against_the_module_table(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/errors.py": "",
            "engine/config.py": "import ray\n",
            "engine/sessions/__init__.py": "",
            "engine/sessions/shard.py": "from engine.errors import E\nfrom engine.storage import wal\n",
            "engine/storage/__init__.py": "",
            "engine/storage/wal.py": "from engine.errors import E\nfrom engine.config import C\n",
            "engine/runtime/__init__.py": "",
            "engine/runtime/actors.py": "",
            "api/__init__.py": "",
            "api/app.py": (
                "from engine.sessions import shard\ndef f():\n    from engine.runtime import actors\n"
            ),
            "api/routes/__init__.py": "from api import app\n",
        },
    )
    modules = structure.project_modules(repo)
    found = structure.forbidden_imports(
        structure.module_table(FIXTURE_DOC),
        modules,
        structure.imports(modules, repo),
        structure.third_party_imports(modules, repo),
    )
    assert found == [
        "api/app.py:3 (api/) imports engine.runtime.actors (engine/runtime/) inside a function",
        "engine/config.py:1 (engine/) imports ray, which its row forbids",
        "engine/storage/wal.py:2 (engine/storage/) imports engine.config (engine/) at module level",
    ]
