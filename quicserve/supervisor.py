"""The supervisor of ``--workers N``: sockets, worker processes, signals.

The supervisor serves nothing itself. It creates the listening sockets, starts N workers
(``python -m quicserve APP ... --bind fd://N --quic-bind fd://M --worker-fd K``, each a
full quicserve) and keeps them running. It runs no event loop: one ``selectors`` loop
waits on the workers' links (:mod:`quicserve.worker`), a signal wake-up pipe and a short
timeout to reap exits.

Sockets, and why the supervisor keeps holding them:

* TCP (and ``unix:``) binds: one listening socket each, shared by every worker; the kernel
  queue is common, so a worker that stops or restarts never drops a connection waiting
  to be accepted.
* UDP (``--quic-bind HOST:PORT``): a ``SO_REUSEPORT`` group of one socket per worker
  *slot*, created in order so that socket *i* of the group is slot *i*; the CIDs of the
  worker in slot *i* carry *i* (:mod:`quicserve.quic.lb`). A classic BPF program on the
  group (``SO_ATTACH_REUSEPORT_CBPF``) routes each datagram to the slot its CID names, and
  new connections over the ``active`` slots by a hash of the client's DCID. Where the
  kernel refuses the program (or ``--quic-worker-routing forward``) the workers forward
  misrouted datagrams to each other with the same rule. Sockets are never closed while
  workers run, except the last one when the last slot is removed: closing any other would
  make the kernel move the last socket into its place and shift every index.
* An inherited UDP socket (``--quic-bind fd://N``, systemd) is one socket: all workers
  share it and always forward.

Signals:

* SIGTERM, SIGINT: every worker is asked to stop gracefully (SIGTERM); a second signal
  kills them. Exit status 0.
* SIGHUP: replace the workers one by one with fresh processes (new code, new
  certificates, the ``--quic-secrets-file`` read again by each). The new worker of a slot
  starts on the same sockets, reports ready, then the old one is told to hand over: it
  stops reading the UDP socket and drains, and the new worker forwards it the datagrams
  of its connections. Nothing is dropped.
* SIGTTIN / SIGTTOU: one more slot (a new socket joins the group) / one slot less (the
  highest: it stops taking new connections, drains, and its socket is closed last).
* A worker that dies is started again in its slot (after a pause if it died within a
  second of starting); one that reaches ``--max-requests`` (+ jitter) asks to be replaced
  like a SIGHUP would replace it. A worker that fails before it was ever ready during
  start-up stops everything with its error, printed once; so does one whose app cannot
  boot (exit status 3) at any later start, a respawn included, instead of being started
  again in a loop (a SIGHUP replacement that fails keeps the old worker instead).
* ``--user``/``--group``: the supervisor stays root and each worker drops after reading
  its certificates; the forwarding directory and ``unix:`` socket files are the user's.

Metrics: with ``--metrics-bind`` the supervisor serves the one endpoint for all workers
(:class:`quicserve.metrics.FleetEndpoint`, non-blocking sockets in this loop), asking the
workers for their numbers over their links on each scrape.

Liveness: every ready worker is pinged over its link when it has been quiet for
:func:`ping_interval` (a quarter of ``--worker-healthcheck-timeout``, 0.25 to 5 s). The
worker answers from its event loop, so a loop wedged by a blocking or CPU-bound app does
not. One that has not answered ``--worker-healthcheck-timeout`` seconds after a ping is
logged (one warning: slot, pid, how long it was silent), counted
(:func:`quicserve.metrics.count_worker_unresponsive`) and replaced the SIGHUP way, ahead of
any other replacement: its successor starts in its slot, then it is told to hand over and
is killed ``--graceful-timeout`` later if it is still there (a wedged loop cannot drain). A
replacement that fails to start leaves it in place, to be caught by the next ping.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .addresses import parse_unix_mode
from .config import Config, config_fields
from .daemon import (
    EXIT_BOOT_FAILURE,
    EXIT_ERROR,
    remove_pid_file,
    resolve_identity,
    write_pid_file,
)
from .metrics import FleetEndpoint, count_worker_restart, count_worker_unresponsive
from .quic.lb import MAX_SLOTS, CidLayout, RoutingTable, cbpf_program
from .secretsfile import read_key_file
from .transport.sockets import attach_cbpf, open_stream_socket
from .transport.udp import open_udp_socket
from .worker import slot_path, worker_path

logger = logging.getLogger("quicserve.error")

#: Fields the supervisor handles itself instead of passing them to workers.
_SUPERVISOR_FIELDS = {
    "app",
    "bind",
    "insecure_bind",
    "quic_bind",
    "workers",
    "max_requests",
    "max_requests_jitter",
    "unix_socket_mode",
    "quic_worker_routing",
    "env_file",  # loaded once, here: workers inherit the environment
    "pid_file",  # the supervisor's PID
    "metrics_bind",
    "worker_healthcheck_timeout",
}
#: How long a new worker may take to report ready.
_START_TIMEOUT = 60.0
#: A draining worker's own --graceful-timeout runs first: it gets this much more to exit.
_DRAIN_MARGIN = 10.0
_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


class SupervisorError(Exception):
    """The workers cannot be started (printed as one line); ``status`` is the exit status
    (:data:`~quicserve.daemon.EXIT_BOOT_FAILURE` when a worker's app cannot boot)."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Worker:
    """One worker process and the supervisor's end of its link."""

    slot: int
    generation: int
    proc: subprocess.Popen[bytes]
    control: socket.socket
    path: str
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    error: str | None = None
    buffer: bytes = b""
    exit_code: int | None = None
    #: For a draining worker: when to kill it if it is still there.
    kill_at: float | None = None
    #: Liveness: when it last said anything; when the ping it has not answered yet went.
    heard: float = field(default_factory=time.monotonic)
    ping_sent: float | None = None
    #: It stopped answering pings and is being replaced.
    unresponsive: bool = False

    def send(self, **message: Any) -> None:
        """A message to the worker; a worker that is gone is reaped by the loop."""
        try:
            self.control.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass

    def signal(self, signum: int) -> None:
        """Signal this process (by its PID, only while it has not been reaped)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


@dataclass(slots=True)
class _UdpGroup:
    bind: str
    sockets: list[socket.socket]
    routing: str  # "kernel" or "forward"
    shared: bool  # one inherited socket for every slot


class Supervisor:
    """Runs ``config.workers`` workers until SIGTERM/SIGINT (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        #: ``--user``/``--group``: the workers become it; the supervisor stays root, to
        #: open sockets for SIGTTIN and start workers that read root-only certificates.
        self.identity = resolve_identity(config.user, config.group)
        self.pid_file_written = False
        self.layout = CidLayout.from_hex(config.quic_lb_server_id)
        self.secret = os.urandom(32)
        self.forward_dir = ""
        self.tcp: list[tuple[str, socket.socket]] = []  # ("--bind" or "--insecure-bind", sock)
        self.unix_paths: list[str] = []
        self.udp: list[_UdpGroup] = []
        self.owners: list[Worker | None] = []
        self.pending: dict[int, Worker] = {}
        self.draining: list[Worker] = []
        self.retiring: int | None = None
        self.reload_queue: collections.deque[int] = collections.deque()
        self.respawn_at: dict[int, float] = {}
        self.started = False
        self.stopping = False
        self.stop_deadline = 0.0
        self.generations = itertools.count()
        self.selector = selectors.DefaultSelector()
        self.signals: list[int] = []
        self._wakeup: tuple[int, int] | None = None
        self.metrics: FleetEndpoint | None = None

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them; returns the exit status."""
        try:
            if self.config.quic_secrets_file is not None:
                # Each worker reads the file itself (and again when replaced); a bad file
                # is one error line before any worker starts.
                read_key_file(self.config.quic_secrets_file)
            self._open_sockets()
            self.forward_dir = tempfile.mkdtemp(prefix="quicserve-")
            if self.identity is not None:
                # Workers bind, unlink and send to sockets here after they dropped root.
                self.identity.chown(self.forward_dir)
                for path in self.unix_paths:
                    self.identity.chown(path)
            self._install_signals()
            self.owners = [None] * self.config.workers
            self._apply_table(broadcast=False)
            for slot in range(self.config.workers):
                self.owners[slot] = self._spawn(slot)
            logger.info(
                "Supervisor %d: starting %d workers (QUIC routing: %s)",
                os.getpid(),
                self.config.workers,
                ", ".join(group.routing for group in self.udp) or "no QUIC",
            )
            while not (self.stopping and not self._live()):
                self._step()
            return 0
        finally:
            self._cleanup()

    def _step(self) -> None:
        timeout = 0.25 if self.metrics is None else self.metrics.timeout(0.25)
        for key, events in self.selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    os.read(key.fd, 4096)
            elif isinstance(key.data, Worker):
                self._read_link(key.data)
            else:
                key.data(events)  # the metrics endpoint's sockets
        if self.metrics is not None:
            self.metrics.tick()
        while self.signals:
            self._on_signal(self.signals.pop(0))
        self._reap()
        now = time.monotonic()
        if self.stopping:
            if now > self.stop_deadline:
                for worker in self._live():
                    logger.warning(
                        "Worker %d (pid %d) did not stop: killing it", worker.slot, worker.proc.pid
                    )
                    worker.signal(signal.SIGKILL)
            return
        for slot, when in list(self.respawn_at.items()):
            if now >= when:
                del self.respawn_at[slot]
                self.owners[slot] = self._spawn(slot)
        for worker in self.draining:
            if worker.kill_at is not None and now > worker.kill_at:
                worker.signal(signal.SIGKILL)
        self._check_liveness(now)
        for slot, worker in list(self.pending.items()):
            if not worker.ready and now - worker.started > _START_TIMEOUT:
                logger.error(
                    "New worker %d (pid %d) did not start; keeping the old one",
                    slot,
                    worker.proc.pid,
                )
                worker.signal(signal.SIGKILL)
        self._advance_reload()

    def _live(self) -> list[Worker]:
        workers = [w for w in self.owners if w is not None]
        workers += list(self.pending.values()) + self.draining
        return [w for w in workers if w.exit_code is None]

    # -- sockets ------------------------------------------------------------------------

    def _open_sockets(self) -> None:
        config = self.config
        mode = parse_unix_mode(config.unix_socket_mode)
        for flag, binds in (("--bind", config.bind), ("--insecure-bind", config.insecure_bind)):
            for bind in binds:
                sock = open_stream_socket(bind, unix_mode=mode, backlog=config.backlog)
                if bind.startswith("unix:"):
                    self.unix_paths.append(bind[len("unix:") :])
                self.tcp.append((flag, sock))
        for bind in config.quic_bind:
            if bind.startswith("fd://"):
                self.udp.append(_UdpGroup(bind, [open_udp_socket(bind)], "forward", True))
                continue
            first = open_udp_socket(bind, reuse_port=True)
            group = _UdpGroup(_bind_of(first), [first], "forward", False)
            self.udp.append(group)
            for _ in range(config.workers - 1):
                group.sockets.append(open_udp_socket(group.bind, reuse_port=True))
            if config.quic_worker_routing != "forward":
                group.routing = "kernel"
        if config.metrics_bind is not None:
            self.metrics = FleetEndpoint(config.metrics_bind, self.selector, self._live)
            logger.info("Metrics on %s", self.metrics.url())

    def _apply_table(self, *, broadcast: bool = True) -> None:
        """Attach the BPF program for the current slots and tell the workers."""
        table = self._table()
        program = cbpf_program(self.layout, table)
        for group in self.udp:
            if group.routing != "kernel":
                continue
            try:
                attach_cbpf(group.sockets[0].fileno(), program)
            except OSError as exc:
                if self.config.quic_worker_routing == "cbpf":
                    raise SupervisorError(
                        f"--quic-worker-routing cbpf: the kernel refused the BPF program ({exc})"
                    ) from None
                logger.warning(
                    "SO_ATTACH_REUSEPORT_CBPF failed (%s): workers forward datagrams instead", exc
                )
                group.routing = "forward"
        if broadcast:
            message = {"table": {"slots": table.slots, "active": list(table.active)}}
            for worker in self._live():
                worker.send(**message)

    def _table(self) -> RoutingTable:
        active = tuple(s for s in range(len(self.owners)) if s != self.retiring)
        return RoutingTable(len(self.owners), active)

    # -- workers ------------------------------------------------------------------------

    def _spawn(self, slot: int, predecessor: Worker | None = None) -> Worker:
        generation = next(self.generations)
        parent, child = socket.socketpair()
        args: list[str] = []
        fds = [child.fileno()]
        for flag, sock in self.tcp:
            args += [flag, f"fd://{sock.fileno()}"]
            fds.append(sock.fileno())
        for group in self.udp:
            sock = group.sockets[0 if group.shared else slot]
            args += ["--quic-bind", f"fd://{sock.fileno()}"]
            fds.append(sock.fileno())
        command = [
            sys.executable,
            "-m",
            "quicserve",
            self.config.app,
            *_worker_args(self.config),
            *args,
            "--worker-fd",
            str(child.fileno()),
        ]
        # Its own process group: a Ctrl-C in the terminal reaches the supervisor only,
        # which then stops the workers once, gracefully.
        proc = subprocess.Popen(command, pass_fds=fds, stdin=subprocess.DEVNULL, process_group=0)
        child.close()
        table = self._table()
        limit = self.config.max_requests
        if limit:
            limit += random.randint(0, self.config.max_requests_jitter)
        worker = Worker(
            slot, generation, proc, parent, worker_path(self.forward_dir, slot, generation)
        )
        worker.send(
            slot=slot,
            generation=generation,
            secret=self.secret.hex(),
            server_id=self.config.quic_lb_server_id,
            table={"slots": table.slots, "active": list(table.active)},
            routing=[group.routing for group in self.udp],
            forward_dir=self.forward_dir,
            predecessor=predecessor.path if predecessor is not None else None,
            max_requests=limit,
            metrics=self.metrics is not None,
        )
        parent.setblocking(False)
        self.selector.register(parent, selectors.EVENT_READ, worker)
        return worker

    def _read_link(self, worker: Worker) -> None:
        try:
            chunk = worker.control.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._unregister(worker)
            return
        # Anything it says (a pong or any other message) shows its event loop runs.
        worker.heard, worker.ping_sent = time.monotonic(), None
        worker.buffer += chunk
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("ready"):
                self._on_ready(worker)
            if self.metrics is not None and ("snapshot" in message or "final" in message):
                self.metrics.snapshot_received(worker, message)
            if "error" in message:
                worker.error = str(message["error"])
            if message.get("recycle") and worker.slot not in self.reload_queue:
                if self.owners[worker.slot] is worker and worker.slot not in self.pending:
                    self.reload_queue.append(worker.slot)

    def _on_ready(self, worker: Worker) -> None:
        worker.ready = True
        slot = worker.slot
        if self.pending.get(slot) is worker:
            del self.pending[slot]
            old = self.owners[slot]
            self.owners[slot] = worker
            self._point_slot(worker)
            if old is not None and old.exit_code is None:
                # A wedged worker reads this only if its loop comes back; no margin for it.
                old.send(handover=True)
                margin = 0.0 if old.unresponsive else _DRAIN_MARGIN
                old.kill_at = time.monotonic() + self.config.graceful_timeout + margin
                self.draining.append(old)
            logger.info(
                "Worker %d replaced: pid %d serves, the old one drains", slot, worker.proc.pid
            )
            return
        self._point_slot(worker)
        logger.info("Worker %d ready (pid %d)", slot, worker.proc.pid)
        if not self.started and all(w is not None and w.ready for w in self.owners):
            self.started = True
            logger.info("All %d workers ready", len(self.owners))
            if self.config.pid_file is not None:
                write_pid_file(self.config.pid_file, os.getpid())
                self.pid_file_written = True

    def _point_slot(self, worker: Worker) -> None:
        link = slot_path(self.forward_dir, worker.slot)
        temporary = f"{link}.{worker.generation}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.symlink(worker.path, temporary)
        os.replace(temporary, link)

    def _unregister(self, worker: Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.control)
        worker.control.close()

    def _reap(self) -> None:
        for worker in [w for w in self._live() if w.proc.poll() is not None]:
            worker.exit_code = worker.proc.returncode
            for _ in range(64):  # a last error message, its final numbers
                if worker.control.fileno() < 0:
                    break
                self._read_link(worker)
            if worker.control.fileno() >= 0:
                self._unregister(worker)
            if self.metrics is not None:
                self.metrics.worker_gone(worker)
            self._on_exit(worker)

    def _on_exit(self, worker: Worker) -> None:
        slot, code = worker.slot, worker.exit_code
        if worker in self.draining:
            self.draining.remove(worker)
            if code == -signal.SIGKILL:
                logger.warning(
                    "Old worker %d (pid %d) killed: it did not finish draining in time",
                    slot,
                    worker.proc.pid,
                )
            else:
                logger.info("Old worker %d (pid %d) finished draining", slot, worker.proc.pid)
            owner = self.owners[slot] if slot < len(self.owners) else None
            if owner is not None:
                owner.send(predecessor=None)
            return
        if self.stopping:
            return
        if self.pending.get(slot) is worker:
            del self.pending[slot]
            owner = self.owners[slot] if slot < len(self.owners) else None
            if owner is not None:
                owner.send(successor=None)
                if owner.unresponsive:
                    # Give the next ping a chance to find it again, and to replace it then.
                    owner.unresponsive, owner.ping_sent = False, None
                    owner.heard = time.monotonic()
            logger.error(
                "New worker %d (pid %d) exited with code %s before it was ready; keeping "
                "the old one%s",
                slot,
                worker.proc.pid,
                code,
                f": {worker.error}" if worker.error else "",
            )
            return
        if self.owners[slot] is not worker:
            return
        if not self.started or (code == EXIT_BOOT_FAILURE and not worker.ready):
            # At start, or ever after (a respawned worker whose app no longer imports):
            # starting it again would fail the same way, so stop instead of looping.
            message = worker.error or f"worker {slot} exited with code {code} while starting"
            if self.started:
                message = f"worker {slot} cannot start, stopping: {message}"
            self._stop(signal.SIGTERM)
            self._wait_stopped()
            status = EXIT_BOOT_FAILURE if code == EXIT_BOOT_FAILURE else EXIT_ERROR
            raise SupervisorError(message, status)
        if slot == self.retiring:
            self._remove_slot(slot)
            return
        logger.warning(
            "Worker %d (pid %d) exited with code %s: starting a new one",
            slot,
            worker.proc.pid,
            code,
        )
        count_worker_restart()
        self.owners[slot] = None
        replacement = self.pending.pop(slot, None)
        if replacement is not None:
            # A replacement was already starting: it takes over, with no one to forward to.
            self.owners[slot] = replacement
            replacement.send(predecessor=None)
            if replacement.ready:
                self._point_slot(replacement)
            return
        delay = 1.0 if time.monotonic() - worker.started < 1.0 else 0.0
        self.respawn_at[slot] = time.monotonic() + delay

    def _check_liveness(self, now: float) -> None:
        """Ping quiet ready workers; replace one that let a ping go unanswered too long."""
        timeout = self.config.worker_healthcheck_timeout
        if not timeout:
            return
        interval = ping_interval(timeout)
        for worker in self.owners:
            if worker is None or not worker.ready or worker.unresponsive:
                continue
            if worker.exit_code is not None or worker.control.fileno() < 0:
                continue  # exited: the reaper replaces it
            if worker.ping_sent is None:
                if now - worker.heard >= interval:
                    worker.ping_sent = now
                    worker.send(ping=True)
            elif now - worker.ping_sent > timeout:
                self._on_unresponsive(worker, now - worker.heard)

    def _on_unresponsive(self, worker: Worker, silent: float) -> None:
        worker.unresponsive = True
        count_worker_unresponsive()
        slot = worker.slot
        logger.warning(
            "Worker %d (pid %d) has not answered for %.1f s (--worker-healthcheck-timeout "
            "%g): replacing it",
            slot,
            worker.proc.pid,
            silent,
            self.config.worker_healthcheck_timeout,
        )
        if slot == self.retiring:
            worker.signal(signal.SIGKILL)  # it was leaving anyway and cannot drain
            return
        if slot in self.pending:
            return  # its successor is already starting
        if slot in self.reload_queue:
            self.reload_queue.remove(slot)
        self.reload_queue.appendleft(slot)  # before any SIGHUP replacement still queued

    def _advance_reload(self) -> None:
        if self.pending or not self.reload_queue or not self.started:
            return
        slot = self.reload_queue.popleft()
        old = self.owners[slot] if slot < len(self.owners) else None
        if old is None or slot == self.retiring or not old.ready:
            return
        logger.info("Replacing worker %d (pid %d)", slot, old.proc.pid)
        successor = self.pending[slot] = self._spawn(slot, predecessor=old)
        # Both will read the slot's socket until the old one hands over: each sends the
        # other what it does not know (worker.py, DatagramRouter).
        old.send(successor=successor.path)

    def _add_slot(self) -> None:
        if len(self.owners) >= MAX_SLOTS or self.retiring is not None:
            logger.warning("SIGTTIN: cannot add a worker now")
            return
        slot = len(self.owners)
        for group in self.udp:
            if not group.shared:
                group.sockets.append(open_udp_socket(group.bind, reuse_port=True))
        self.owners.append(None)
        self._apply_table()
        self.owners[slot] = self._spawn(slot)
        logger.info("SIGTTIN: added worker %d (now %d)", slot, len(self.owners))

    def _retire_slot(self) -> None:
        slot = len(self.owners) - 1
        owner = self.owners[slot]
        if slot == 0 or self.retiring is not None or slot in self.pending or owner is None:
            logger.warning("SIGTTOU: cannot remove a worker now")
            return
        self.retiring = slot
        if slot in self.reload_queue:
            self.reload_queue.remove(slot)
        self._apply_table()  # no new connections for this slot; its own CIDs still arrive
        owner.signal(signal.SIGTERM)
        logger.info("SIGTTOU: removing worker %d (pid %d)", slot, owner.proc.pid)

    def _remove_slot(self, slot: int) -> None:
        self.owners.pop()
        for group in self.udp:
            if not group.shared:
                group.sockets.pop().close()  # the last socket: no index moves
        self.retiring = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(slot_path(self.forward_dir, slot))
        self._apply_table()
        logger.info("Worker %d removed (now %d)", slot, len(self.owners))

    # -- signals and stopping -----------------------------------------------------------

    def _install_signals(self) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._wakeup = (read, write)
        self.selector.register(read, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in _SIGNALS:
            signal.signal(signum, self._signal_handler)

    def _signal_handler(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGCHLD:
            self.signals.append(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.stopping:
                logger.warning("Received %s again: killing the workers", name)
                self._stop(signal.SIGKILL)
            else:
                logger.info("Received %s: stopping the workers gracefully", name)
                self._stop(signal.SIGTERM)
        elif self.stopping:
            return
        elif signum == signal.SIGHUP:
            logger.info("Received SIGHUP: replacing the workers one by one")
            for slot in range(len(self.owners)):
                if slot not in self.reload_queue and slot != self.retiring:
                    self.reload_queue.append(slot)
        elif signum == signal.SIGTTIN:
            self._add_slot()
        elif signum == signal.SIGTTOU:
            self._retire_slot()

    def _stop(self, signum: int) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.config.graceful_timeout + 5
        for worker in self._live():
            worker.signal(signum)

    def _wait_stopped(self) -> None:
        deadline = time.monotonic() + self.config.graceful_timeout + 5
        for worker in self._live():
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.signal(signal.SIGKILL)
                worker.proc.wait()
            worker.exit_code = worker.proc.returncode

    def _cleanup(self) -> None:
        if self._live():
            self._stop(signal.SIGTERM)
            self._wait_stopped()
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            for fd in self._wakeup:
                os.close(fd)
        for worker in [w for w in self.owners if w is not None] + self.draining:
            if worker.control.fileno() >= 0:
                worker.control.close()
        if self.metrics is not None:
            self.metrics.close()
        self.selector.close()
        for _, sock in self.tcp:
            sock.close()
        for group in self.udp:
            for sock in group.sockets:
                sock.close()
        for path in self.unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self.forward_dir:
            shutil.rmtree(self.forward_dir, ignore_errors=True)
        if self.pid_file_written and self.config.pid_file is not None:
            remove_pid_file(self.config.pid_file, os.getpid())
        logger.info("Supervisor stopped")


def ping_interval(timeout: float) -> float:
    """How long a worker may be quiet before it is pinged: a quarter of the health-check
    timeout, between 0.25 s (the supervisor loop's tick) and 5 s."""
    return min(5.0, max(0.25, timeout / 4))


def _bind_of(sock: socket.socket) -> str:
    """``HOST:PORT`` of a bound socket (the real port after binding port 0)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker_args(config: Config) -> list[str]:
    """The command-line flags that give a worker the same settings as the supervisor."""
    args: list[str] = []
    for f in config_fields():
        if f.name in _SUPERVISOR_FIELDS or f.metadata.get("cli", True) is False:
            continue
        value = getattr(config, f.name)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args
