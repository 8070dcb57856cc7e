"""The code's shape, read from the source without importing it: the project's modules, the imports
between them (at module level and inside functions), the comments and docstrings, the module
table at the end of docs/architecture.md and the anchors of benchmarks/RESULTS.md's headings.

Everything here parses files with `ast` and `tokenize`; importing the code to see what it imports
would run it, and would miss imports that only run inside a function."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Where each source tree's modules are named from: `client/session_engine_client/x.py` is the
# module `session_engine_client.x`, the rest are named from the repository root.
SOURCE_ROOTS: dict[str, str] = {
    "engine": "",
    "api": "",
    "session_engine": "",
    "client/session_engine_client": "client",
    "benchmarks": "",
}
PRODUCTION_ROOTS = ("engine", "api", "session_engine", "client/session_engine_client")


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "engine.sessions.shard"; a package's __init__ is the package's name
    path: Path  # relative to the repository
    is_package: bool  # an __init__.py

    @property
    def package(self) -> str:
        """The package directory it belongs to, as the module table names it: `engine/sessions/`."""
        return self.path.parent.as_posix() + "/"


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the project module it resolves to
    line: int
    in_function: bool


def _skipped(path: Path) -> bool:
    return any(
        part == "__pycache__" or part.startswith(".") or part.endswith(".egg-info") for part in path.parts
    )


def project_modules(repo: Path = REPO) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for root, name_base in SOURCE_ROOTS.items():
        for path in sorted((repo / root).rglob("*.py")):
            relative = path.relative_to(repo)
            if _skipped(relative):
                continue
            parts = list(relative.relative_to(name_base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join(parts)] = Module(".".join(parts), relative, is_package)
    return modules


def package_directories(repo: Path = REPO) -> set[str]:
    """Every directory under the source roots that holds Python files, as `engine/storage/`."""
    found = set()
    for root in SOURCE_ROOTS:
        for path in (repo / root).rglob("*.py"):
            relative = path.relative_to(repo)
            if not _skipped(relative):
                found.add(relative.parent.as_posix() + "/")
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import that can run, with whether it sits in a function body. The body of an
    `if TYPE_CHECKING:` never runs, so its imports make no edge."""

    def walk(
        nodes: Iterable[ast.AST], in_function: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node, in_function
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.orelse, in_function)
            else:
                nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                yield from walk(ast.iter_child_nodes(node), nested)

    yield from walk(tree.body, False)


def _base_of_relative(module: Module, node: ast.ImportFrom) -> str:
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def resolve(module: Module, node: ast.Import | ast.ImportFrom, modules: dict[str, Module]) -> list[str]:
    """The project modules an import statement names: the most specific module each name
    resolves to. The parent packages Python runs first make no edge of their own: a package's
    `__init__` that re-exports its modules is not a cycle anyone has to untangle."""

    def known(dotted: str) -> str | None:
        while dotted:
            if dotted in modules:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _base_of_relative(module, node) if node.level else (node.module or "")
        for alias in node.names:
            submodule = f"{base}.{alias.name}" if base else alias.name
            names.append(submodule if submodule in modules else base)
    return sorted({target for name in names if (target := known(name))})


def third_party_roots(
    module: Module, node: ast.Import | ast.ImportFrom, modules: dict[str, Module]
) -> list[str]:
    """The top-level names of what an import takes from outside the project (`fastapi`, `ray`)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return []
        names = [node.module or ""]
    else:
        names = [alias.name for alias in node.names]
    tops = {name.split(".")[0] for name in names}
    project_tops = {name.split(".")[0] for name in modules}
    return sorted(tops - project_tops)


def parse(module: Module, repo: Path = REPO) -> ast.Module:
    return ast.parse((repo / module.path).read_text(encoding="utf-8"), filename=str(module.path))


def imports(modules: dict[str, Module], repo: Path = REPO) -> list[Import]:
    found = []
    for module in modules.values():
        for node, in_function in _import_statements(parse(module, repo)):
            for target in resolve(module, node, modules):
                found.append(Import(module.name, target, node.lineno, in_function))
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle inside a strongly connected component, from its first module back to it:
    the shortest way round (breadth first), so the message names real import edges."""
    start = component[0]
    members = set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & members):
                if successor == start:
                    way_back = [start]
                    while node != start:
                        way_back.append(node)
                        node = previous[node]
                    return [start, *reversed(way_back)]
                if successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    raise ValueError(f"{start} is on no cycle")


def import_cycles(edges: Iterable[Import]) -> list[str]:
    """Each cycle as `a -> b -> a`: one per strongly connected component of more than one module,
    and one per module that imports itself."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    cycles = []
    for component in strongly_connected(graph):
        if len(component) > 1 or component[0] in graph[component[0]]:
            cycles.append(" -> ".join(cycle_through(component, graph)))
    return cycles


# Comments that tell a tool something, not a reader why.
_PRAGMA = re.compile(r"#\s*(?:type:\s*ignore|noqa|pragma|fmt:)")


def comment_lines(source: str) -> set[int]:
    """Lines holding a comment meant for a reader: a bare `# type: ignore` or `# noqa` names no cause."""
    return {
        token.start[0]
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and not _PRAGMA.match(token.string)
    }


def function_imports_without_cause(modules: dict[str, Module], repo: Path = REPO) -> list[str]:
    """`path:line` of every import inside a function with no comment on its lines or the line
    above. A comment above a run of imports on consecutive lines names the cause for the run."""
    found = []
    for module in modules.values():
        source = (repo / module.path).read_text(encoding="utf-8")
        comments = comment_lines(source)
        previous_end, previous_covered = 0, False
        for node, in_function in _import_statements(ast.parse(source)):
            end = node.end_lineno or node.lineno
            covered = bool(comments.intersection(range(node.lineno - 1, end + 1))) or (
                previous_covered and previous_end == node.lineno - 1
            )
            if in_function and not covered:
                found.append(f"{module.path.as_posix()}:{node.lineno}")
            previous_end, previous_covered = end, covered
    return sorted(found, key=_path_line_order)


def _path_line_order(location: str) -> tuple[str, int]:
    path, _, line = location.rpartition(":")
    return path, int(line)


# ---- comments and docstrings


@dataclass(frozen=True)
class Text:
    path: str
    line: int
    text: str  # one line of a comment or docstring


def comments_and_docstrings(path: Path, repo: Path = REPO) -> list[Text]:
    """Every comment, and every line of every string that stands as a statement of its own (module,
    class and function docstrings, and the strings documenting an attribute), in line order."""
    source = (repo / path).read_text(encoding="utf-8")
    name = path.as_posix()
    found = [
        Text(name, token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found.extend(
                Text(name, node.lineno + offset, line)
                for offset, line in enumerate(node.value.value.splitlines())
            )
    return sorted(found, key=lambda text: text.line)


def production_files(repo: Path = REPO) -> list[Path]:
    files: list[Path] = []
    for root in PRODUCTION_ROOTS:
        files.extend(
            path.relative_to(repo)
            for path in sorted((repo / root).rglob("*.py"))
            if not _skipped(path.relative_to(repo))
        )
    return files


# A figure with a performance unit: what a run measured, not a setting the code chooses. Limits and
# defaults (at most 256 vectors, mode 0600, retry after 5 s) carry no such unit and pass.
_NUMBER = r"(?<![\w.])\d[\d,]*(?:\.\d+)?"
MEASUREMENT = re.compile(
    "|".join(
        [
            _NUMBER + r"\s*(?:µs|us|ns|ms)\b",
            _NUMBER
            + r"\s*(?:k\s*)?(?:ops|req|requests|appends|queries|calls|messages|writes|reads)\s*/\s*s\b",
            _NUMBER + r"\s*(?:[KMG]i?B|[KMG]b)\s*/\s*s\b",
            _NUMBER + r"\s*[x\u00d7]\s+(?:faster|slower|more|less|fewer|higher|lower|the|as)\b",
            _NUMBER + r"\s*%\s+(?:of|faster|slower|more|less|fewer|higher|lower|better|worse)\b",
            _NUMBER + r"\s+times\s+(?:faster|slower|more|less|fewer|as)\b",
        ]
    )
)


def measurements(texts: Iterable[Text], allowed: dict[tuple[str, str], str]) -> list[str]:
    """`path:line: text` of every comment or docstring line with a measured figure, except those
    `allowed` names by (path, a fragment of the line)."""
    found = []
    for text in texts:
        if MEASUREMENT.search(text.text) and not any(
            path == text.path and fragment in text.text for path, fragment in allowed
        ):
            found.append(f"{text.path}:{text.line}: {text.text.strip()}")
    return found


# ---- Markdown: anchors and the module table


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lowercased, anything but letters,
    digits, spaces, hyphens and underscores dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def _headings(markdown: str) -> Iterator[tuple[int, str]]:
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)):
            yield len(match.group(1)), match.group(2)


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, heading in _headings(markdown):
        anchor = github_anchor(heading)
        if anchor in seen:
            seen[anchor] += 1
            anchor = f"{anchor}-{seen[anchor]}"
        else:
            seen[anchor] = 0
        found.add(anchor)
    return found


def dangling_links(
    texts: Iterable[Text], file_name: str, file_anchors: set[str], *, anchor_required: bool
) -> list[str]:
    """`path:line: text` of each mention of `file_name` whose `#anchor` no heading of it has, or,
    where `anchor_required`, that has no anchor at all."""
    mention = re.compile(re.escape(file_name) + r"(#[\w\-]*)?")
    found = []
    for text in texts:
        for match in mention.finditer(text.text):
            anchor = match.group(1)
            if (anchor is None and anchor_required) or (
                anchor is not None and anchor[1:] not in file_anchors
            ):
                found.append(f"{text.path}:{text.line}: {text.text.strip()}")
                break
    return found


@dataclass(frozen=True)
class TableRow:
    packages: tuple[str, ...]  # `engine/storage/` as written
    may_import: tuple[str, ...] | None  # None without a "May import" column
    must_not_import: tuple[str, ...] | None


class TableError(ValueError):
    pass


_TICKED = re.compile(r"`([^`]+)`")
EVERY_PACKAGE = "*"
_EVERY = re.compile(r"\b(?:every|any|all)\s+(?:other\s+)?packages?\b", re.IGNORECASE)
# Prose names a third-party module by its proper name: "FastAPI, Ray" forbids `fastapi` and `ray`.
_PROPER_NAME = re.compile(r"\b[A-Z][A-Za-z0-9_]*\b")


def _may_import(cell: str) -> tuple[str, ...]:
    names = _TICKED.findall(cell)
    if _EVERY.search(_TICKED.sub("", cell)):
        names.append(EVERY_PACKAGE)
    return tuple(names)


def _must_not_import(cell: str) -> tuple[str, ...]:
    prose = _TICKED.sub("", cell)
    return tuple(_TICKED.findall(cell) + [word.lower() for word in _PROPER_NAME.findall(prose)])


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def module_table(markdown: str) -> list[TableRow]:
    """The rows of the table in the section whose heading contains "Module table".

    The first column names packages in backticks (`engine/storage/`); a "May import" column,
    when there is one, names what the row's packages may import: a package (`engine/`, its own
    modules only), a package and everything under it (`engine/*`), one module
    (`engine/errors.py`), or "every package" in words. A "Must not import" column names what
    they must not: project packages the same way, third-party modules by their import name in
    backticks (`fastapi`) or by their proper name in words (FastAPI, Ray)."""
    lines = markdown.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("#") and "module table" in line.lower()), None
    )
    if start is None:
        raise TableError('docs/architecture.md has no section whose heading contains "Module table"')
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    section = []
    for line in lines[start + 1 :]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        section.append(line)
    table = [line for line in section if line.strip().startswith("|")]
    if len(table) < 3:
        raise TableError(f'the section "{lines[start].lstrip("# ")}" holds no markdown table with rows')
    header = [cell.lower() for cell in _cells(table[0])]
    may = next((i for i, cell in enumerate(header) if "may import" in cell), None)
    must_not = next((i for i, cell in enumerate(header) if "must not" in cell), None)
    rows = []
    for line in table[2:]:
        cells = _cells(line)
        cells += [""] * (len(header) - len(cells))
        rows.append(
            TableRow(
                packages=tuple(_TICKED.findall(cells[0])),
                may_import=None if may is None else _may_import(cells[may]),
                must_not_import=None if must_not is None else _must_not_import(cells[must_not]),
            )
        )
    return rows


def _matches(module: Module, name: str) -> bool:
    """Whether `name` from the table (`engine/`, `engine/*`, `engine/errors.py`) covers `module`."""
    if name == EVERY_PACKAGE:
        return True
    if name.endswith("/*"):
        return module.package.startswith(name[:-1])
    if name.endswith(".py"):
        return module.path.as_posix() == name
    return module.package == name


def _is_wildcard(name: str) -> bool:
    return name == EVERY_PACKAGE or name.endswith("/*")


def is_project_name(name: str) -> bool:
    return name.endswith(("/", "/*", ".py"))


def forbidden_imports(
    rows: list[TableRow],
    modules: dict[str, Module],
    edges: Iterable[Import],
    outside: dict[str, list[tuple[str, int]]],
) -> list[str]:
    """`path:line (package) imports ...` for each import the table does not allow: a project module
    of another package that no "May import" entry covers, or anything a "Must not import" entry
    names. `outside` maps each project module to the third-party modules it imports."""
    # Packages that share a row are one unit: they import each other freely.
    rules = {package: row for row in rows for package in row.packages}
    found = []
    for edge in edges:
        importer, target = modules[edge.importer], modules[edge.target]
        row = rules.get(importer.package)
        if row is None or target.package in row.packages:
            continue
        named = any(_matches(target, name) for name in row.may_import or () if not _is_wildcard(name))
        widely = any(_matches(target, name) for name in row.may_import or () if _is_wildcard(name))
        banned = any(_matches(target, name) for name in row.must_not_import or () if is_project_name(name))
        # A package "May import" names outright wins over one "Must not import" names in passing
        # ("Ray (only through `engine/runtime/`)"); a ban wins over a wildcard (`engine/*` but
        # not `engine/runtime/`).
        allowed = named or (not banned and (widely or row.may_import is None))
        if not allowed:
            where = "inside a function" if edge.in_function else "at module level"
            found.append(
                f"{importer.path.as_posix()}:{edge.line} ({importer.package}) imports {target.name} "
                f"({target.package}) {where}"
            )
    for name, third_party in outside.items():
        module = modules[name]
        row = rules.get(module.package)
        for top, line in third_party:
            if row is not None and top in (row.must_not_import or ()):
                found.append(
                    f"{module.path.as_posix()}:{line} ({module.package}) imports {top}, which its row forbids"
                )
    return sorted(set(found), key=lambda text: _path_line_order(text.split(" ")[0]))


def third_party_imports(modules: dict[str, Module], repo: Path = REPO) -> dict[str, list[tuple[str, int]]]:
    """For each project module, the third-party modules it imports (top-level names), with the line."""
    found: dict[str, list[tuple[str, int]]] = {}
    for module in modules.values():
        for node, _ in _import_statements(parse(module, repo)):
            found.setdefault(module.name, []).extend(
                (top, node.lineno) for top in third_party_roots(module, node, modules)
            )
    return found
