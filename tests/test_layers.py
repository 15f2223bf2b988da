"""The layer rule: folders are floors, imports only go down, and there are no import cycles.

Every import counts: module level, under ``TYPE_CHECKING`` and inside functions, absolute or
relative. ``FLOORS`` below is the house's picture (docs/architecture.md draws it); a new
module must be given a floor here, so the picture stays true.

Run ``python -m tests.test_layers [PACKAGE_DIR]`` for the numbers: modules, imports,
cycles, imports that run up a floor, and the largest modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from .importscan import resolve_relative

PACKAGE = Path(__file__).resolve().parent.parent / "quicserve"

#: Lowest first. A module may import from its own floor or any floor below it. A key that
#: ends in "/" is a folder (every module in it); otherwise it is one module of the package.
FLOORS: list[tuple[str, list[str]]] = [
    (
        "ground",
        [
            "types",
            "version",
            "events",
            "lowlevel",
            "connection_info",
            "addresses",
            "accesslog",
            "config",
            "daemon",
            "registry",
            "stats",
            "certs",
            "tls",
        ],
    ),
    ("transport", ["transport/"]),
    ("quic", ["quic/"]),
    ("protocol", ["protocol/"]),
    ("streams", ["streams/"]),
    ("connection", ["connection/"]),
    ("apps", ["app", "wsgi", "proxy"]),
    ("server", ["worker", "metrics", "server", "secretsfile"]),
    ("processes", ["supervisor", "reload"]),
    ("runner", ["runner"]),
    ("entry points", ["api", "cli", "trust"]),
    ("package", ["__init__", "__main__"]),
]


def module_name(path: Path, root: Path) -> str:
    """``quicserve/connection/quic.py`` -> ``connection.quic`` (``__init__`` for a folder's
    own file: ``connection.__init__``)."""
    return ".".join(path.relative_to(root).with_suffix("").parts)


def floor_of(module: str) -> int | None:
    """The index in :data:`FLOORS` of ``module`` (a name as :func:`module_name` gives)."""
    for index, (_, members) in enumerate(FLOORS):
        for member in members:
            if member.endswith("/"):
                if module.startswith(member[:-1].replace("/", ".") + "."):
                    return index
            elif module == member:
                return index
    return None


def _resolve(module: str, node: ast.ImportFrom, known: set[str]) -> list[str]:
    """The package modules one ``from ... import ...`` names."""
    if node.level:
        # Names here leave out the package (``connection.quic``) and a folder's own file
        # is ``connection.__init__``, so its package is its name without the last part.
        absolute = resolve_relative(f"quicserve.{module}", False, node.level, node.module)
        target = absolute[len("quicserve") :].lstrip(".")
    elif node.module and (node.module == "quicserve" or node.module.startswith("quicserve.")):
        target = node.module[len("quicserve") :].lstrip(".")
    else:
        return []
    found = []
    for alias in node.names:
        # ``from . import x`` / ``from .pkg import mod`` may name a module.
        candidate = f"{target}.{alias.name}" if target else alias.name
        if candidate in known or f"{candidate}.__init__" in known:
            found.append(candidate if candidate in known else f"{candidate}.__init__")
    if not found:
        found.append(target if target in known else f"{target}.__init__" if target else "__init__")
    return [name for name in found if name in known]


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                edges.update(_resolve(module, node, known))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "quicserve" or alias.name.startswith("quicserve."):
                        name = alias.name[len("quicserve") :].lstrip(".") or "__init__"
                        if name in known:
                            edges.add(name)
                        elif f"{name}.__init__" in known:
                            edges.add(f"{name}.__init__")
        edges.discard(module)
        # A module imports its package's __init__ implicitly; that is not an arrow.
        parent = module.rsplit(".", 1)[0] + ".__init__" if "." in module else "__init__"
        edges.discard(parent)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module is on a higher floor."""
    upward = []
    for module, targets in sorted(graph.items()):
        own = floor_of(module)
        for target in sorted(targets):
            theirs = floor_of(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append((module, target))
    return upward


# -- the tests --------------------------------------------------------------------------


def test_every_module_has_a_floor() -> None:
    missing = [m for m in import_graph() if floor_of(m) is None]
    assert not missing, f"give these modules a floor in FLOORS: {missing}"


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_upward_imports() -> None:
    assert upward_imports(import_graph()) == []


def test_config_imports_only_the_ground_floor() -> None:
    graph = import_graph()
    assert all(floor_of(target) == 0 for target in graph["config"]), graph["config"]


def test_transport_knows_no_http() -> None:
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("transport."):
            above = {t for t in targets if t.split(".")[0] not in ("transport",)}
            assert all(floor_of(t) == 0 for t in above), (module, above)


def test_the_api_does_not_import_the_cli() -> None:
    graph = import_graph()
    reachable: set[str] = set()
    todo = ["api"]
    while todo:
        module = todo.pop()
        for target in graph[module]:
            if target not in reachable:
                reachable.add(target)
                todo.append(target)
    assert "cli" not in reachable


def _top_level_imports(folder: Path) -> set[str]:
    """The top-level package of every import in ``folder`` (relative ones excluded)."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_the_client_kit_stands_alone() -> None:
    """Tests and interop share clientkit/; interop never reaches into tests/, and the kit
    imports neither of them nor the server (clients must not share the server's code)."""
    root = PACKAGE.parent
    assert not _top_level_imports(root / "clientkit") & {"tests", "interop", "quicserve"}
    assert "tests" not in _top_level_imports(root / "interop")


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    """Relative, TYPE_CHECKING and function-local imports all count."""
    package = tmp_path / "quicserve"
    (package / "transport").mkdir(parents=True)
    (package / "streams").mkdir()
    (package / "__init__.py").write_text("")
    (package / "transport" / "__init__.py").write_text("")
    (package / "streams" / "__init__.py").write_text("")
    (package / "streams" / "http.py").write_text("from ..transport import tcp\n")
    (package / "transport" / "tcp.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..streams.http import X\n"
        "def f():\n    from quicserve.config import Config\n"
    )
    (package / "config.py").write_text("")
    graph = import_graph(package)
    assert graph["transport.tcp"] == {"streams.http", "config"}
    assert graph["streams.http"] == {"transport.tcp"}
    assert cycles(graph) == [["streams.http", "transport.tcp"]]
    assert upward_imports(graph) == [("transport.tcp", "streams.http")]


def report(root: Path) -> str:
    """The numbers, for people: ``python -m tests.test_layers [PACKAGE_DIR]``."""
    graph = import_graph(root)
    lines = [
        f"modules: {len(graph)}, imports between them: {sum(map(len, graph.values()))}",
        f"cycles: {len(cycles(graph))}",
    ]
    for component in cycles(graph):
        lines.append("  " + " <-> ".join(component))
    upward = upward_imports(graph)
    lines.append(f"upward imports: {len(upward)}")
    lines += [f"  {a} -> {b}" for a, b in upward]
    unplaced = sorted(m for m in graph if floor_of(m) is None)
    if unplaced:
        lines.append(f"modules without a floor: {', '.join(unplaced)}")
    sizes = sorted(
        ((len(p.read_text().splitlines()), module_name(p, root)) for p in root.rglob("*.py")),
        reverse=True,
    )
    lines.append("largest modules: " + ", ".join(f"{name} {size}" for size, name in sizes[:6]))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE))
