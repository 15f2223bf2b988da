"""docs/limits.md is true: every bound it lists names a real flag with its real default and
tests that exist, and every limit in ``Config`` is listed.

A row of a limits table looks like::

    | resource | bound, and what happens past it | `--flag` default | `tests/file.py::test_name` |

The third cell is either a flag and its default as ``Config`` has it (the first word after
the flag; a unit in parentheses may follow) or ``fixed`` for a bound that is not a setting,
and the fourth names at least one test, each of which must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from quicserve.config import Config, config_fields

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "limits.md"

_FLAG = re.compile(r"`--([a-z0-9-]+)`\s+(\S+)")
_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")

#: Config fields that bound something a peer controls; each must be in the document.
LIMIT_FIELDS = {
    "max_connections",
    "limit_concurrency",
    "max_header_bytes",
    "max_request_body_size",
    "header_read_timeout",
    "keep_alive_timeout",
    "h2_max_concurrent_streams",
    "h2_stream_window_size",
    "h2_connection_window_size",
    "h2_max_frame_size",
    "h2_max_stream_errors",
    "h2_max_control_frames",
    "write_buffer_size",
    "connection_write_buffer_size",
    "ws_max_size",
    "ws_max_queue",
    "ws_ping_interval",
    "ws_ping_timeout",
    "quic_idle_timeout",
    "quic_max_streams",
    "quic_max_data",
    "quic_max_cancelled_requests",
    "quic_max_fragments",
    "quic_stream_window_size",
    "quic_max_connections",
    "quic_session_tickets",
    "quic_retry_threshold",
    "quic_max_handshakes",
    "quic_max_handshakes_per_address",
    "quic_max_crypto_buffer",
    "quic_max_ack_frames_per_packet",
    "qpack_max_table_capacity",
    "qpack_blocked_streams",
    "wsgi_max_threads",
    "webtransport_max_sessions",
    "webtransport_max_data",
    "webtransport_max_streams",
}


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " ", ":"}:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] != "resource":
            rows.append(cells)
    return rows


def test_every_row_names_a_real_flag_default_and_test() -> None:
    defaults = {f.name: f.default for f in config_fields()}
    rows = _rows()
    assert len(rows) >= 20
    for resource, _bound, setting, tests in rows:
        match = _FLAG.search(setting)
        if match is None:
            assert setting.startswith("fixed"), f"{resource!r}: no `--flag` default: {setting!r}"
        else:
            name = match[1].replace("-", "_")
            assert name in defaults, f"{resource!r}: no setting {match[1]}"
            assert match[2] == str(defaults[name]), (
                f"{resource!r}: --{match[1]} defaults to {defaults[name]!r}, the doc says "
                f"{match[2]}"
            )
        found = _TEST.findall(tests)
        assert found, f"{resource!r}: no test named"
        for path, name in found:
            source = ROOT / path
            assert source.is_file(), f"{resource!r}: {path} does not exist"
            assert re.search(rf"def {name}\b", source.read_text()), f"{path}::{name} is missing"


def test_every_limit_setting_is_listed() -> None:
    listed = {m[1].replace("-", "_") for row in _rows() for m in [_FLAG.search(row[2])] if m}
    missing = LIMIT_FIELDS - listed
    assert not missing, f"limits not in docs/limits.md: {sorted(missing)}"
    assert LIMIT_FIELDS <= {f.name for f in config_fields()}
    assert Config().max_header_bytes > 0
