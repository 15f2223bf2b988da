"""House rule: protocol modules are sans-IO (no anyio, asyncio, trio or socket imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import quicserve.protocol

_FORBIDDEN = {"anyio", "asyncio", "trio", "socket", "selectors", "sniffio", "uvloop"}
_PROTOCOL_DIR = Path(quicserve.protocol.__file__).parent


@pytest.mark.parametrize("path", sorted(_PROTOCOL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_protocol_module_is_sans_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        assert not isinstance(node, ast.Await | ast.AsyncFunctionDef), f"{path.name} awaits"
    assert not imported & _FORBIDDEN, f"{path.name} imports {imported & _FORBIDDEN}"
