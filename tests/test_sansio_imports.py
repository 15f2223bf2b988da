"""House rule: sans-IO modules import no I/O, directly or through other quicserve modules.

The sans-IO modules are every module of ``quicserve/protocol/`` and ``quicserve/quic/``,
found by glob, so a new file is covered the day it is added, and the WebSocket framers of
``quicserve/streams/`` (``SANS_IO_MODULES``). For each one, every import
is followed through the quicserve modules it reaches, transitively:

* absolute and relative imports (``from ..transport import sockets`` is resolved to
  ``quicserve.transport.sockets``: a name imported from a package counts as a module when
  a file of that name exists), and ``importlib.import_module``/``__import__`` of a
  constant name;
* imports anywhere in the file: under ``if TYPE_CHECKING:``, inside functions, in
  ``try`` blocks (a lazy import still makes the module depend on what it imports);
* importing ``quicserve.a.b`` runs ``quicserve/a/__init__.py`` too, so that package is
  followed as well; the root ``quicserve/__init__.py`` is followed only when a module
  imports it by name, because it exists to export the server API (``serve``/``run``)
  and every submodule import runs it.

A module fails when that walk reaches ``anyio``, ``asyncio``, ``trio``, ``socket``,
``selectors``, ``sniffio`` or ``uvloop`` (or any quicserve module that imports one, which
the walk reaches by construction); the message shows the chain of imports. A sans-IO
module also never awaits.

There are no exceptions: ``config.check`` once reached ``transport/sockets.py`` for a
pure parser (now ``addresses.py``) and ``quic/lb.py`` attached its BPF program to a
socket itself (now ``transport/sockets.attach_cbpf``).
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import quicserve

from .importscan import resolve_relative

PACKAGE = "quicserve"
ROOT = Path(quicserve.__file__).parent
FORBIDDEN = frozenset({"anyio", "asyncio", "trio", "socket", "selectors", "sniffio", "uvloop"})
#: Packages whose every module is sans-IO.
SANS_IO_PACKAGES = ("protocol", "quic")
#: Sans-IO modules outside those packages: the WebSocket framers (streams/wsframing.py).
SANS_IO_MODULES = (
    "quicserve.streams.wsframing",
    "quicserve.streams.wsframing_websockets",
    "quicserve.streams.wsengine",
)
#: Sans-IO modules named in the house style and the README; the glob must find them all
#: (a rename or a move must not quietly drop one from the check).
NAMED_SANS_IO = frozenset(
    {
        "quicserve.protocol.http1",
        "quicserve.protocol.http1_httptools",
        "quicserve.protocol.http2",
        "quicserve.protocol.http3",
        "quicserve.quic.compat",
        "quicserve.quic.endpoint",
        "quicserve.quic.lb",
        "quicserve.quic.tokens",
        *SANS_IO_MODULES,
    }
)


#: ``(importer, imported): why it is wrong`` for the I/O imports sans-IO modules reach
#: today. Each is a real violation of the rule, reported in issue 10, not an exception.
def module_file(name: str) -> Path | None:
    """The file of quicserve module ``name``, or ``None`` if there is none."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = ROOT.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sans_io_modules() -> list[str]:
    """Every module of the sans-IO packages, by glob."""
    found = [
        module_name(path) for package in SANS_IO_PACKAGES for path in (ROOT / package).glob("*.py")
    ]
    return sorted(found + [name for name in SANS_IO_MODULES if module_file(name) is not None])


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, where it is, and whether it is lazy or typing-only."""

    target: str
    line: int
    where: str  # "module", "function" or "TYPE_CHECKING"


def _where(node: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> str:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return "function"
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return "TYPE_CHECKING"
    return "module"


def imports_of(name: str, source: str | None = None) -> tuple[Import, ...]:
    """Every import in module ``name`` (``source`` overrides its file's text)."""
    if source is None:
        return _file_imports(name)
    return tuple(_parse_imports(name, source))


@functools.cache
def _file_imports(name: str) -> tuple[Import, ...]:
    path = module_file(name)
    assert path is not None, name
    return tuple(_parse_imports(name, path.read_text()))


def _parse_imports(name: str, source: str) -> Iterator[Import]:
    path = module_file(name)
    assert path is not None, name
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, _where(node, parents))
        elif isinstance(node, ast.ImportFrom):
            base = (
                resolve_relative(name, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            where = _where(node, parents)
            yield Import(base, node.lineno, where)
            for alias in node.names:
                # ``from ..transport import sockets``: the name is a module if a file
                # says so (otherwise it is an attribute of ``base``, already counted).
                if alias.name != "*" and module_file(f"{base}.{alias.name}") is not None:
                    yield Import(f"{base}.{alias.name}", node.lineno, where)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                called in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                yield Import(first.value, node.lineno, _where(node, parents))


def _quicserve_modules(target: str) -> list[str]:
    """The quicserve modules importing ``target`` runs (its packages, root excepted)."""
    parts = target.split(".")
    found = []
    for end in range(2, len(parts) + 1):
        candidate = ".".join(parts[:end])
        if module_file(candidate) is not None:
            found.append(candidate)
    if target == PACKAGE:
        found.append(PACKAGE)  # imported by name: its API imports are followed
    return found


def violations(start: str, sources: Mapping[str, str] | None = None) -> list[str]:
    """The chains of imports from ``start`` to a forbidden module (known ones excepted);
    ``sources`` replaces the text of some modules (for testing the checker)."""
    sources = sources or {}
    found: list[str] = []
    # module -> how it was reached from ``start`` (the chain, for the message)
    chain: dict[str, str] = {start: start}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for imp in imports_of(module, sources.get(module)):
            top = imp.target.split(".")[0]
            note = f" (line {imp.line}" + ("" if imp.where == "module" else f", {imp.where}") + ")"
            if top in FORBIDDEN:
                found.append(f"{chain[module]} -> {imp.target}{note}")
                continue
            if top != PACKAGE:
                continue
            for target in _quicserve_modules(imp.target):
                if target in chain:
                    continue
                chain[target] = f"{chain[module]} -> {target}{note}"
                queue.append(target)
    return found


def _awaits(name: str) -> list[int]:
    path = module_file(name)
    assert path is not None
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Await | ast.AsyncFunctionDef | ast.AsyncFor | ast.AsyncWith)
    ]


# -- the rule -----------------------------------------------------------------------------


def test_the_glob_finds_every_named_sans_io_module() -> None:
    modules = set(sans_io_modules())
    assert NAMED_SANS_IO <= modules, NAMED_SANS_IO - modules
    assert "quicserve.protocol" in modules and "quicserve.quic" in modules


@pytest.mark.parametrize("module", sans_io_modules())
def test_module_is_sans_io(module: str) -> None:
    chains = violations(module)
    assert not chains, f"{module} reaches I/O:\n  " + "\n  ".join(chains)
    assert not _awaits(module), f"{module} awaits (lines {_awaits(module)})"


# -- the checker itself -------------------------------------------------------------------


def test_relative_imports_are_followed() -> None:
    # The old checker skipped every ``from ..x import y``; these must all be caught.
    cases = {
        "from ..transport import sockets\n": "quicserve.transport.sockets",
        "from ..transport.sockets import parse_bind\n": "quicserve.transport.sockets",
        "from .. import lowlevel\n": "quicserve.lowlevel",
        "def f():\n    from ..lowlevel import Wakeup\n": "quicserve.lowlevel",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..registry import X\n": (
            "quicserve.registry"
        ),
        "import importlib\nimportlib.import_module('quicserve.server')\n": "quicserve.server",
    }
    for source, expected in cases.items():
        chains = violations("quicserve.protocol.fields", {"quicserve.protocol.fields": source})
        assert any(f"-> {expected} " in c for c in chains), (source, chains)


def test_chains_go_through_clean_looking_modules() -> None:
    # http1 -> fields -> (an edited fields importing asyncio in a function)
    sources = {
        "quicserve.protocol.http1": "from . import fields\n",
        "quicserve.protocol.fields": "def later():\n    import asyncio\n",
    }
    assert violations("quicserve.protocol.http1", sources) == [
        "quicserve.protocol.http1 -> quicserve.protocol.fields (line 1)"
        " -> asyncio (line 2, function)"
    ]


def test_relative_import_resolution() -> None:
    assert resolve_relative("quicserve.protocol.http1", False, 1, "fields") == (
        "quicserve.protocol.fields"
    )
    assert resolve_relative("quicserve.protocol.http1", False, 2, None) == "quicserve"
    assert resolve_relative("quicserve.protocol", True, 1, "base") == "quicserve.protocol.base"
    with pytest.raises(ValueError):
        resolve_relative("quicserve.protocol.http1", False, 3, None)
