"""One-shot wake-ups: the cheapest way for one task to wake another, on every backend.

The request path wakes a task several times per request (a worker for the next request,
a stream waiting for body, a reader waiting for credit). ``anyio.Event()`` looks the
backend up and builds an ``asyncio.Event`` plus a future each time, which py-spy put at
5-8% of an HTTP/1.1 request on asyncio. :func:`wakeup_factory` picks, once per
connection, a factory for objects with ``set()`` and ``await wait()``:

* on asyncio (and uvloop) a bare future, set at most once, awaited by one task;
* on trio :class:`_TrioWakeup`: the waiting task parked with
  ``trio.lowlevel.wait_task_rescheduled`` and rescheduled by ``set``. ``anyio.Event`` there
  looks the backend up, builds a ``trio.Event`` and a parking lot each time (py-spy: 4-5%
  of an HTTP/1.1 request on trio, issue 11);
* on any other backend ``anyio.Event``.

Rules: each wake-up is used once and by one waiter; ``set`` before ``wait`` is fine;
cancellation of the waiter behaves as with any awaited future or anyio event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import sniffio

if TYPE_CHECKING:
    import trio.lowlevel


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


class _TrioWakeup:
    """A one-shot wake-up on trio's own primitives: one waiting task, rescheduled once."""

    __slots__ = ("_done", "_task")

    def __init__(self) -> None:
        self._done = False
        self._task: trio.lowlevel.Task | None = None

    def set(self) -> None:
        if self._done:
            return
        self._done = True
        task = self._task
        if task is not None:
            self._task = None
            _trio.reschedule(task)

    async def wait(self) -> None:
        if self._done:
            # As awaiting a done future on asyncio: no trip through the scheduler.
            return
        self._task = _trio.current_task()
        await _trio.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        # The waiter was cancelled: forget it, so a later ``set`` reschedules nobody.
        self._task = None
        abort: trio.lowlevel.Abort = _trio.Abort.SUCCEEDED
        return abort


#: ``trio.lowlevel``, imported by :func:`wakeup_factory` the first time trio runs (importing
#: trio costs ~0.1 s that asyncio servers need not pay).
_trio: Any = None


def wakeup_factory() -> Callable[[], Wakeup]:
    """A factory of one-shot wake-ups for the backend running now."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        return lambda: _FutureWakeup(loop)
    if library == "trio":
        global _trio
        if _trio is None:
            import trio.lowlevel

            _trio = trio.lowlevel
        return _TrioWakeup
    return anyio.Event
