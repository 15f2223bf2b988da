"""Fixtures for the adversarial suite: ``spawn`` (real CLI processes) and ``backend``."""

from __future__ import annotations

import importlib.util

import pytest

from ..test_cli import env, spawn  # noqa: F401  (fixtures)

BACKENDS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
        ),
    ),
    "trio",
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every attack runs against a server on asyncio, uvloop and trio."""
    return str(request.param)
