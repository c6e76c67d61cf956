"""The layout shows the design: no import cycles among the modules of ``service/``, and the
domain modules that the web calls import nothing of the web.

Imports are read from the source with ``ast``, every one of them: at the top of a module, inside a
function (an import moved into a function to dodge a cycle is still a cycle), ``from . import x``
and ``from .. import x`` as well as ``import service.x``. A cycle is reported as the chain of
imports that closes it, each with its file and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "service"

#: Import cycles tolerated for now, each named with the reason; every other cycle fails the test.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

#: Domain modules the web calls: plain functions over a session, no web imports.
DOMAIN = ("service.interventions", "service.refusals", "service.reports", "service.mail_links",
          "service.models_base", "service.models", "service.models_admin", "service.models_site",
          "service.models_ops")
#: What a domain module must not import: the web framework and the web side of this service.
WEB = ("litestar", "service.api", "service.api_idempotent", "service.admin", "service.coach",
       "service.entrepreneur", "service.web", "service.problems", "service.auth", "service.app")


@dataclass(frozen=True)
class Import:
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.target} ({self.path}:{self.line})"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported_names(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement reaches, relative ones made absolute."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        origin = ".".join([*base, node.module] if node.module else base)
    else:
        origin = node.module or ""
    # ``from . import x`` may name a module (``service.x``) or a name inside ``origin``.
    return [f"{origin}.{alias.name}" for alias in node.names] + [origin]


def _graph() -> dict[str, dict[str, Import]]:
    modules = _modules()
    graph: dict[str, dict[str, Import]] = {}
    for module, path in modules.items():
        edges: dict[str, Import] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = _imported_names(module, path, node)
            if isinstance(node, ast.ImportFrom):
                # ``from .a import b``: the module ``a.b`` if there is one, else ``a``.
                names = [name for name in names[:-1] if name in modules] or names[-1:]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module and name not in edges:
                    edges[name] = Import(name, str(path.relative_to(ROOT)), node.lineno)
        graph[module] = edges
    return graph


def _components(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[Import]:
    """One chain of imports inside ``component`` that leads from its first module back to it."""
    members = set(component)
    start = component[0]
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target, edge in sorted(graph[node].items()):
            if target == start:
                return [*paths[node], edge]
            if target in members and target not in paths:
                paths[target] = [*paths[node], edge]
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _describe(graph: dict[str, dict[str, Import]], component: list[str]) -> str:
    chain = _cycle(graph, component)
    return f"{component[0]} -> " + " -> ".join(str(edge) for edge in chain)


def test_no_import_cycles_among_service_modules() -> None:
    graph = _graph()
    cycles = [c for c in _components(graph) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles (move the shared piece to the module it belongs to):\n" + "\n".join(
        _describe(graph, c) for c in cycles)


def test_every_known_cycle_still_exists() -> None:
    """An exception that is no longer needed is removed, so that the cycle cannot come back."""
    components = {frozenset(c) for c in _components(_graph())}
    gone = [f"{sorted(pair)}: {why}" for pair, why in KNOWN_CYCLES.items() if pair not in components]
    assert not gone, "these cycles are gone; remove them from KNOWN_CYCLES:\n" + "\n".join(gone)


def test_domain_modules_import_nothing_of_the_web() -> None:
    graph = _graph()
    modules = _modules()

    def web(name: str) -> bool:
        return any(name == part or name.startswith(part + ".") for part in WEB)

    wrong = [f"{module} imports {edge}" for module in DOMAIN for target, edge in graph[module].items() if web(target)]
    for module in DOMAIN:
        for node in ast.walk(ast.parse(modules[module].read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                wrong += [f"{module}:{node.lineno} imports {name}" for name in names if web(name)]
    assert not wrong, "\n".join(wrong)


def test_the_checks_find_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    """The reading of imports itself: ``from . import x`` inside a function closes a cycle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    graph = {}
    for name in ("a", "b"):
        path = package / f"{name}.py"
        tree = ast.parse(path.read_text())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for dotted in _imported_names(f"pkg.{name}", path, node):
                    if dotted in ("pkg.a", "pkg.b") and dotted != f"pkg.{name}":
                        targets.add(dotted)
        graph[f"pkg.{name}"] = {t: Import(t, path.name, 1) for t in targets}
    assert _components(graph) == [["pkg.a", "pkg.b"]]
    assert _describe(graph, ["pkg.a", "pkg.b"]) == "pkg.a -> pkg.b (a.py:1) -> pkg.a (b.py:1)"
