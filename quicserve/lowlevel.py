"""One-shot wake-ups: the cheapest way for one task to wake another, on every backend.

The request path wakes a task several times per request (a worker for the next request,
a stream waiting for body, a reader waiting for credit). ``anyio.Event()`` looks the
backend up and builds an ``asyncio.Event`` plus a future each time, which py-spy put at
5-8% of an HTTP/1.1 request on asyncio. :func:`wakeup_factory` picks, once per
connection, a factory for objects with ``set()`` and ``await wait()``:

* on asyncio (and uvloop) a bare future, set at most once, awaited by one task;
* on any other backend (trio) ``anyio.Event``.

Rules: each wake-up is used once and by one waiter; ``set`` before ``wait`` is fine;
cancellation of the waiter behaves as with any awaited future or anyio event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import anyio
import sniffio


class Wakeup(Protocol):
    """What a one-shot wake-up offers."""

    def set(self) -> None:
        """Wake the waiter (idempotent)."""

    async def wait(self) -> None:
        """Wait until ``set`` is called."""


class _FutureWakeup:
    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        await self._future


def wakeup_factory() -> Callable[[], Wakeup]:
    """A factory of one-shot wake-ups for the backend running now."""
    if sniffio.current_async_library() == "asyncio":
        loop = asyncio.get_running_loop()
        return lambda: _FutureWakeup(loop)
    return anyio.Event
