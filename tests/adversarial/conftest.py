"""Fixtures for the adversarial suite: ``spawn`` (real CLI processes) and ``backend``."""

from __future__ import annotations

import pytest

from ..test_cli import env, spawn  # noqa: F401  (fixtures)

BACKENDS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.client("uvloop"),
    ),
    "trio",
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every attack runs against a server on asyncio, uvloop and trio."""
    return str(request.param)
