"""Read readiness for many connected sockets on trio, with one registration per socket.

trio waits for a socket with ``EPOLLONESHOT``: every ``trio.lowlevel.wait_readable`` re-arms
the descriptor with an ``epoll_ctl`` system call. An HTTP/1.1 keep-alive connection waits
once per request, and py-spy put that ``epoll_ctl`` at 11 % of a trio worker's time under
wrk (issue 11); asyncio's selector registers a reading socket once. :class:`EdgeHub` does
what asyncio does on trio: one edge-triggered epoll set per ``trio.run`` holds every
socket registered with it (one ``epoll_ctl`` per connection), and one pump task waits for
that set to become readable (through trio, so the run loop still sleeps in one place),
collects the ready sockets with a single ``epoll_wait`` and wakes the task waiting on each.
A burst of ready connections then costs one re-arm (of the set) instead of one each.

Rules:

* Linux only (``select.epoll``): :func:`edge_hub` returns ``None`` elsewhere, and callers
  keep ``trio.lowlevel.wait_readable``.
* Edge-triggered: a socket's readiness is reported once per arrival. An edge that comes
  while nobody waits is kept (``_ready``) and makes the next :meth:`EdgeHub.wait_readable`
  return at once, so none is lost; the caller reads until the socket is empty (or a short
  read says it is) before waiting, and a spurious return only costs it a failed ``recv``.
* One waiter per socket; a cancelled wait forgets its waiter (as trio's own waits do).
* :meth:`EdgeHub.unregister` before the socket is closed (the descriptor number is reused);
  a waiter still there is woken with ``trio.ClosedResourceError``.
* The hub belongs to one ``trio.run`` (a ``RunVar``); its pump is a system task, ended
  with the run, which closes the epoll set.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio
    import trio.lowlevel

_EVENTS = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0)
_EDGE = getattr(select, "EPOLLET", 0)

#: ``trio`` and ``outcome``, imported by :func:`edge_hub` (asyncio servers never import trio).
_trio: Any = None
_outcome: Any = None
_hub_var: Any = None


class EdgeHub:
    """Edge-triggered read readiness for the sockets registered with it (see the module)."""

    __slots__ = ("_epoll", "_fd", "_ready", "_waiters")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        #: The task waiting on each descriptor.
        self._waiters: dict[int, trio.lowlevel.Task] = {}
        #: Descriptors that became readable while nobody waited.
        self._ready: set[int] = set()

    def register(self, fd: int) -> bool:
        """Watch ``fd`` (a connected socket) from now on; whether that worked (if not,
        the caller waits with trio's own ``wait_readable``)."""
        self._ready.discard(fd)
        self._waiters.pop(fd, None)
        try:
            self._epoll.register(fd, _EVENTS | _EDGE)
        except OSError:
            return False
        return True

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (call before it is closed); a waiter gets
        ``trio.ClosedResourceError``."""
        self._ready.discard(fd)
        task = self._waiters.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        if task is not None:
            _trio.lowlevel.reschedule(
                task, _outcome.Error(_trio.ClosedResourceError("the socket was closed"))
            )

    async def wait_readable(self, fd: int) -> None:
        """Return once ``fd`` may have bytes (or its end) to read. Returns at once, with no
        scheduler trip, if an edge came since the last wait: the caller is about to read
        anyway, and reads more often than it waits."""
        ready = self._ready
        if fd in ready:
            ready.discard(fd)
            return
        lowlevel = _trio.lowlevel
        waiters = self._waiters
        if fd in waiters:
            raise _trio.BusyResourceError("another task is already waiting for this socket")
        waiters[fd] = lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            if waiters.get(fd) is not None:
                del waiters[fd]
            result: trio.lowlevel.Abort = lowlevel.Abort.SUCCEEDED
            return result

        await lowlevel.wait_task_rescheduled(abort)

    async def _pump(self) -> None:
        lowlevel = _trio.lowlevel
        reschedule = lowlevel.reschedule
        wait = lowlevel.wait_readable
        poll = self._epoll.poll
        waiters = self._waiters
        ready = self._ready
        try:
            while True:
                await wait(self._fd)
                for fd, _ in poll(0):
                    task = waiters.pop(fd, None)
                    if task is not None:
                        reschedule(task)
                    else:
                        ready.add(fd)
        finally:
            self._epoll.close()


def edge_hub() -> EdgeHub | None:
    """The running ``trio.run``'s hub (made, with its pump, on first use), or ``None`` where
    there is no ``select.epoll``."""
    global _trio, _outcome, _hub_var
    if not hasattr(select, "epoll") or not _EDGE:
        return None
    if _hub_var is None:
        import outcome
        import trio
        import trio.lowlevel

        _trio = trio
        _outcome = outcome
        _hub_var = trio.lowlevel.RunVar("quicserve_edge_hub")
    hub: EdgeHub | None = _hub_var.get(None)
    if hub is None:
        hub = EdgeHub()
        _hub_var.set(hub)
        _trio.lowlevel.spawn_system_task(hub._pump, name="quicserve.edge_hub")
    return hub
