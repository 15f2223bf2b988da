"""What the import checkers share: resolving a relative import (PEP 328).

``tests/test_layers.py`` (floors and cycles) and ``tests/test_sansio_imports.py`` (no I/O
below the protocol floor) each walk import statements with ``ast``; both resolve relative
imports here, so the two cannot disagree about what ``from ..x import y`` names.
"""

from __future__ import annotations


def resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name ``from <level dots><module> import ...`` refers to inside module
    ``importer`` (``is_package``: ``importer`` is a package's ``__init__``, which is its own
    package). Level 1 is the importer's own package."""
    package = importer if is_package else importer.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"{importer}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base
