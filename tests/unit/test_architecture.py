"""The package's shape: no import circle among camlabel modules, and each step has one home.

The import graph is read from the source with ``ast`` (imports inside functions included:
this codebase defers heavy imports into function bodies, and a deferred import is still a
dependency of the module).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "camlabel"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The camlabel module that an imported dotted name lives in (a name may be a symbol)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the camlabel modules it imports (anywhere in its body)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    prefix = node.module or ""
                names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
            for name in names:
                target = _resolve(name, modules)
                # ``import camlabel.x.y`` binds (and runs) the parent packages too; only the
                # named module is the dependency worth checking.
                if target is not None and target != mod and target != "camlabel":
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_sees_deferred_imports() -> None:
    graph = import_graph()
    # predict imports classify at module level, lungs imports the segmenter inside LungFields
    assert "camlabel.classify" in graph["camlabel.predict"]
    assert "camlabel.models.segmenter" in graph["camlabel.lungs"]


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_camlabel_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_private_name_from_another() -> None:
    """A ``_name`` is private to its module: a helper two modules share is public, or moves
    to the module that owns it. (Dunders and private *modules* are not private names.)"""
    modules = _modules()
    bad = []
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if _resolve(node.module, modules) in (None, mod):
                    continue
                bad += [
                    f"{mod}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                    and not a.name.startswith("__")
                    and f"{node.module}.{a.name}" not in modules
                ]
    assert not bad, bad


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try):
            # ``if TYPE_CHECKING:`` / ``try: import x`` blocks define names too
            names.update(
                _top_level_names(ast.Module(body=list(ast.iter_child_nodes(node)), type_ignores=[]))
            )
    return names


def test_every_camlabel_import_names_something_that_exists() -> None:
    """Deferred imports run only when their function does: after a move, a stale
    ``from camlabel.old import name`` in a function body would pass every import check."""
    modules = _modules()
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in modules.items()}
    defined = {m: _top_level_names(t) for m, t in trees.items()}
    files = [
        p for d in ("tests", "benchmarks", "training") for p in sorted((REPO / d).rglob("*.py"))
    ]
    sources = [(modules[m], trees[m]) for m in modules]
    sources += [(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in files]
    bad = []
    for path, tree in sources:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bad += [
                    f"{path}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("camlabel.") and a.name not in modules
                ]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mod = node.module or ""
                if mod != "camlabel" and not mod.startswith("camlabel."):
                    continue
                if mod not in modules:
                    bad.append(f"{path}:{node.lineno}: from {mod} (no such module)")
                    continue
                bad += [
                    f"{path}:{node.lineno}: from {mod} import {a.name}"
                    for a in node.names
                    if a.name != "*"
                    and a.name not in defined[mod]
                    and f"{mod}.{a.name}" not in modules
                ]
    assert not bad, "\n".join(bad)
