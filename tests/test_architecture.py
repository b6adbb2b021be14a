"""``docs/architecture.md`` stays true: its layer table allows every import the code makes (read with ``ast``),
it lists every layer and module, and every path and ``Class.member`` it names exists."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "architecture.md").read_text()
#: Folders whose modules make up the project (tests are its users, not a layer).
SOURCES = ("leffa", "preprocess", "train", "bench", "comfyui_nodes")
#: Packages whose every module the doc's module list names.
LISTED_PACKAGES = (
    "leffa/core", "leffa/inspect", "leffa/app", "leffa/eval", "preprocess", "train", "train/synthetic", "comfyui_nodes",
)


def _layer_table() -> dict[str, set[str]]:
    """``{layer: layers it may import}`` from the rows of the doc's "Layers" table."""
    section = DOC.split("## Layers", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            table[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[2]))
    return table


def _layer_of_file(path: Path) -> str:
    relative = path.relative_to(REPO_ROOT).as_posix()
    parts = relative.split("/")
    if parts[0] == "leffa":
        return f"leffa/{parts[1]}/" if len(parts) > 2 else relative
    return f"{parts[0]}/" if len(parts) > 1 else relative


def _layer_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "leffa":
        if len(parts) == 1:
            return None  # `from leffa import x`: the submodule decides, see _imports
        if (REPO_ROOT / "leffa" / parts[1]).is_dir():
            return f"leffa/{parts[1]}/"
        return f"leffa/{parts[1]}.py"
    if parts[0] in ("preprocess", "train", "bench", "comfyui_nodes"):
        return f"{parts[0]}/"
    if parts[0] in ("app", "app_components"):
        return f"{parts[0]}.py"
    return None


def _imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _project_files() -> list[Path]:
    files = [path for folder in SOURCES for path in (REPO_ROOT / folder).rglob("*.py")]
    return [*files, REPO_ROOT / "app.py", REPO_ROOT / "app_components.py"]


def test_every_import_is_an_arrow_the_doc_allows():
    table = _layer_table()
    arrows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in _project_files():
        source = _layer_of_file(path)
        if path.name == "__init__.py" and source == "leffa/__init__.py":
            continue
        for module in _imports(path):
            target = _layer_of_module(module)
            if target is not None and target != source:
                arrows[(source, target)].append(path.relative_to(REPO_ROOT).as_posix())
    sources = {source for source, _ in arrows} | {_layer_of_file(path) for path in _project_files()}
    sources.discard("leffa/__init__.py")
    assert sources <= set(table), f"layers the doc's table does not list: {sorted(sources - set(table))}"
    forbidden = {arrow: files for arrow, files in arrows.items() if arrow[1] not in table[arrow[0]]}
    assert not forbidden, "imports the doc does not allow: " + "; ".join(
        f"{source} -> {target} (in {', '.join(sorted(set(files))[:3])})" for (source, target), files in forbidden.items()
    )
    assert not any(target.startswith("leffa/app") for source, target in arrows if source == "train/")


def test_the_doc_lists_every_module():
    named = set(re.findall(r"`([A-Za-z_0-9/.]+\.py)`", DOC))
    missing = [
        f"{package}/{path.name}"
        for package in LISTED_PACKAGES
        for path in sorted((REPO_ROOT / package).glob("*.py"))
        if path.name != "__init__.py" and path.name not in named and f"{package}/{path.name}" not in named
    ]
    assert not missing, f"modules docs/architecture.md does not name: {missing}"


def test_every_path_the_doc_names_exists():
    paths = {
        token for token in re.findall(r"`([^`\s]+)`", DOC)
        if token.startswith(("leffa/", "train/", "preprocess/", "bench/", "docs/", "tests/", "assets/", "comfyui_nodes/"))
        or token in ("app.py", "app_components.py")
    }
    assert paths, "the doc names no paths?"
    missing = sorted(path for path in paths if not (REPO_ROOT / path.rstrip("/")).exists())
    assert not missing, f"paths docs/architecture.md names that do not exist: {missing}"


def _members() -> dict[str, set[str]]:
    """Every project class's methods and attributes (fields, ``self.x`` assignments)."""
    members: dict[str, set[str]] = defaultdict(set)
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in ast.walk(node):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members[node.name].add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[node.name].add(item.target.id)
                elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                    members[node.name].add(item.attr)
    return members


def test_every_class_member_the_doc_names_exists():
    members = _members()
    named = set(re.findall(r"`([A-Z_][A-Za-z_]*)\.([a-z_][A-Za-z_0-9]*)`", DOC))
    assert named, "the doc names no Class.member?"
    missing = sorted(
        f"{cls}.{member}" for cls, member in named if member != "py" and member not in members.get(cls, set())
    )
    assert not missing, f"docs/architecture.md names members that do not exist: {missing}"
