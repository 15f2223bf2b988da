"""What a long-running server does with its own process: exit statuses, ``--env-file``,
``--user``/``--group`` and ``--pid-file``.

Rules:

* Exit statuses are few and documented (README, "Running as a service"): 0 a clean stop,
  1 a setting, file or address to fix (and any other error), 2 a command-line usage
  error (argparse's), 3 the app cannot boot (it does not import, or its lifespan startup
  failed): starting it again will fail the same way, so a supervisor (ours, or systemd
  with ``RestartPreventExitStatus=3``) must not restart it in a loop.
* Every problem with a file or a name given here is a :class:`~quicserve.config.ConfigError`
  whose message is one line naming the flag and the file (and line).
* Privileges are dropped once, in the order that cannot be undone halfway: supplementary
  groups, then the group, then the user; and checked afterwards (root cannot be regained).
* A pid file is written atomically (a temporary file renamed over it), so a reader never
  sees a partial number, and removed only while it still holds our PID.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
from dataclasses import dataclass

from .config import ConfigError

#: A clean stop.
EXIT_OK = 0
#: A setting, file or address to fix; any other error.
EXIT_ERROR = 1
#: A command-line usage error (argparse exits with 2 itself).
EXIT_USAGE = 2
#: The app cannot boot: not importable, or its lifespan startup failed. Not worth
#: restarting until someone changes something (``RestartPreventExitStatus=3``).
EXIT_BOOT_FAILURE = 3

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def parse_env_file(path: str) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a dotenv-style file, in order.

    The subset every dotenv reader agrees on: blank lines and ``#`` comments, an optional
    ``export `` prefix, ``KEY=VALUE`` with the value unquoted (surrounding blanks and a
    `` #`` comment dropped), in single quotes (taken as is) or in double quotes (``\\n``,
    ``\\t``, ``\\"``, ``\\\\`` escapes). No variable expansion, no multi-line values. Raises
    :class:`ConfigError` naming the file and line."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"--env-file: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--env-file {path}: not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        key, equals, rest = line.partition("=")
        key = key.rstrip()
        if not equals or not _KEY.fullmatch(key):
            got = raw.strip()
            raise ConfigError(f"--env-file {path}:{number}: expected KEY=VALUE, got {got!r}")
        try:
            values[key] = _env_value(rest.lstrip())
        except ValueError as exc:
            raise ConfigError(f"--env-file {path}:{number}: {key}: {exc}") from None
    return values


def _env_value(text: str) -> str:
    if text[:1] == "'":
        end = text.find("'", 1)
        if end < 0:
            raise ValueError("unclosed single quote")
        _after_quote(text[end + 1 :])
        return text[1:end]
    if text[:1] == '"':
        out: list[str] = []
        index = 1
        while index < len(text):
            char = text[index]
            if char == "\\" and index + 1 < len(text):
                following = text[index + 1]
                out.append(_ESCAPES.get(following, "\\" + following))
                index += 2
                continue
            if char == '"':
                _after_quote(text[index + 1 :])
                return "".join(out)
            out.append(char)
            index += 1
        raise ValueError("unclosed double quote")
    comment = text.find(" #")
    if comment >= 0:
        text = text[:comment]
    if "\0" in text:
        raise ValueError("NUL in the value")
    return text.strip()


def _after_quote(rest: str) -> None:
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise ValueError(f"unexpected {rest!r} after the closing quote")


def load_env_file(path: str, environ: dict[str, str] | os._Environ[str] | None = None) -> int:
    """Put the file's variables into ``environ`` (``os.environ``), except those already
    set, which win (as python-dotenv and Uvicorn do); returns how many were set."""
    target = os.environ if environ is None else environ
    count = 0
    for key, value in parse_env_file(path).items():
        if key not in target:
            target[key] = value
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom to run as after binding: ``uid``/``gid`` (``None``: keep the current one)."""

    uid: int | None
    gid: int | None
    name: str

    def chown(self, path: str) -> None:
        """Give ``path`` (a file or directory we made while root) to this identity."""
        os.chown(path, -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid)


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """``--user``/``--group`` as numbers; ``None`` when neither is given. A user's own
    group is the default group. Needs root (one clear error otherwise)."""
    if user is None and group is None:
        return None
    uid = gid = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"--user {user}: no such user") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"--group {group}: no such group") from None
    if os.geteuid() != 0:
        flag = "--user" if user is not None else "--group"
        raise ConfigError(
            f"{flag} needs root to change identity (this process runs as uid {os.geteuid()})"
        )
    return Identity(uid, gid, user if user is not None else f"group {group}")


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good: no supplementary groups, then the group, then the user
    (a process that gave up its uid first could no longer change its groups)."""
    os.setgroups([])
    if identity.gid is not None:
        os.setgid(identity.gid)
    if identity.uid is not None:
        os.setuid(identity.uid)
        # setuid as root sets the real, effective and saved uid: there is no way back.
        if os.getuid() != identity.uid or os.geteuid() != identity.uid:
            raise RuntimeError("setuid did not change every user ID")  # pragma: no cover


def check_pid_file(path: str) -> None:
    """Refuse to start when ``path`` names a live process other than this one (another
    instance); a stale file (no such process) is simply replaced later, as Gunicorn does."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read().strip()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"--pid-file: cannot read {path}: {exc.strerror or exc}") from None
    if not text.isdigit() or int(text) in (0, os.getpid()):
        return
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, under another user
    raise ConfigError(
        f"--pid-file {path}: process {pid} is running (remove the file if it is not quicserve)"
    )


def write_pid_file(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically (a temporary file in the same directory, renamed)."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{pid}.tmp")
    try:
        with open(temporary, "w", encoding="ascii") as file:
            file.write(f"{pid}\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ConfigError(f"--pid-file: cannot write {path}: {exc.strerror or exc}") from None


def remove_pid_file(path: str, pid: int) -> None:
    """Remove ``path`` if it still holds ``pid`` (a newer instance may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="ascii") as file:
            if int(file.read().strip()) != pid:
                return
        os.unlink(path)
