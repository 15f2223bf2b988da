"""``--reload``: run the server in a child process and restart it when files change.

The parent never imports the app: it runs ``python -m quicserve <the same arguments>
--no-reload`` as a child, watches files, and restarts the child on a change.

Rules:

* Watching is polling: every :data:`POLL_INTERVAL` seconds the parent ``stat()``s the files
  under ``--reload-dir`` (default: ``--app-dir``) whose names match ``--reload-include``
  (``*.py`` always) and whose names or relative paths match no ``--reload-exclude``
  (``.*``, ``*.py[cod]``, ``*~``, ``__pycache__`` always). Polling needs no dependency and
  no OS-specific API (inotify misses changes on some bind mounts and network file
  systems); a development tree costs one ``stat`` per file per interval.
* A change (file added, removed or modified) restarts the child: SIGTERM, a wait of
  ``--graceful-timeout`` plus a margin, SIGKILL only if it is still alive, then a new
  child. Changes that come within :data:`SETTLE` seconds of each other (an editor saving
  several files) are one restart.
* The child runs in its own process group, so a terminal's Ctrl-C reaches only the parent,
  which forwards SIGINT/SIGTERM to the child once, waits for it, and exits 0. SIGHUP (the
  terminal closed) stops the child with SIGTERM the same way: the child itself would take
  a SIGHUP as "reload the certificate" and outlive its terminal.
* A child that exits by itself (a syntax error in the app, a port in use) is reported and
  started again at the next change; the parent keeps watching.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .config import Config

logger = logging.getLogger("quicserve.error")

#: Seconds between two scans of the watched files.
POLL_INTERVAL = 0.5
#: Seconds to wait after a change for more changes before restarting.
SETTLE = 0.1
DEFAULT_INCLUDE = ("*.py",)
DEFAULT_EXCLUDE = (".*", "*.py[cod]", "*~", "__pycache__")

Snapshot = dict[str, int]


class FileWatcher:
    """Polls a set of directories for changes to files matching the patterns."""

    def __init__(self, config: Config) -> None:
        dirs = config.reload_dir or (config.app_dir or ".",)
        self.roots = [Path(d).resolve() for d in dirs]
        self.include = DEFAULT_INCLUDE + config.reload_include
        self.exclude = DEFAULT_EXCLUDE + config.reload_exclude
        self._snapshot = self.scan()

    def _excluded(self, name: str, relative: str) -> bool:
        return any(
            fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(relative, pattern)
            for pattern in self.exclude
        )

    def scan(self) -> Snapshot:
        """Modification times of every watched file."""
        found: Snapshot = {}
        for root in self.roots:
            for directory, subdirs, files in os.walk(root):
                base = Path(directory)
                subdirs[:] = [
                    d for d in subdirs if not self._excluded(d, str((base / d).relative_to(root)))
                ]
                for name in files:
                    path = base / name
                    if self._excluded(name, str(path.relative_to(root))):
                        continue
                    if not any(fnmatch.fnmatch(name, pattern) for pattern in self.include):
                        continue
                    try:
                        found[str(path)] = path.stat().st_mtime_ns
                    except OSError:
                        continue  # removed between listing and stat
        return found

    def changes(self) -> list[str]:
        """Files added, removed or modified since the last call (sorted)."""
        current = self.scan()
        previous = self._snapshot
        self._snapshot = current
        changed = {path for path in current.keys() | previous.keys()}
        return sorted(p for p in changed if current.get(p) != previous.get(p))


class Reloader:
    """The parent process of ``--reload``."""

    def __init__(self, argv: Sequence[str], config: Config) -> None:
        self.command = [sys.executable, "-m", "quicserve", *argv, "--no-reload"]
        self.watcher = FileWatcher(config)
        self.stop_timeout = config.graceful_timeout + 5.0
        self._stop = threading.Event()
        self._signal: int | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._signal is None:
            self._signal = signum
        self._stop.set()

    def _start(self) -> None:
        self.child = subprocess.Popen(self.command, process_group=0)

    def _stop_child(self, signum: int) -> int | None:
        child = self.child
        if child is None:
            return None
        if child.poll() is None:
            child.send_signal(signum)
            try:
                child.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Reloader: server %d did not stop; killing it", child.pid)
                child.kill()
                child.wait()
        return child.returncode

    def run(self) -> int:
        """Watch and restart until SIGINT/SIGTERM; returns the exit code."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            logger.info(
                "Reloader %d watching %s for %s",
                os.getpid(),
                ", ".join(map(str, self.watcher.roots)),
                ", ".join(self.watcher.include),
            )
            self._start()
            reported_exit = False
            while not self._stop.wait(POLL_INTERVAL):
                changed = self.watcher.changes()
                if changed:
                    while not self._stop.wait(SETTLE) and (more := self.watcher.changes()):
                        changed += more
                    if self._stop.is_set():
                        break
                    shown = ", ".join(sorted(set(changed))[:3])
                    logger.info("Reloader: %s changed; restarting the server", shown)
                    self._stop_child(signal.SIGTERM)
                    self._start()
                    reported_exit = False
                elif self.child is not None and self.child.poll() is not None and not reported_exit:
                    reported_exit = True
                    logger.warning(
                        "Reloader: server exited with code %d; waiting for changes",
                        self.child.returncode,
                    )
            forward = self._signal if self._signal != signal.SIGHUP else None
            self._stop_child(forward or signal.SIGTERM)
            logger.info("Reloader stopped")
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def run_with_reload(argv: Sequence[str], config: Config) -> int:
    """Run ``quicserve ARGV`` under the reloader (the CLI's ``--reload``)."""
    return Reloader(argv, config).run()
