"""Settings from a TOML file (``--config``) and ``QUICSERVE_*`` variables.

Precedence: command line > environment > file > defaults. The unit tests pin the rules of
``quicserve.config``; the CLI tests run the real command with all three sources at once and
read the result back over HTTP, and check that every bad setting is one line and exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from quicserve.config import (
    Config,
    ConfigError,
    coerce,
    read_config_file,
    read_environment,
    resolve,
)

from . import test_cli as cli

env = cli.env
spawn = cli.spawn
backend = cli.backend


def write(tmp_path: Path, text: str, name: str = "quicserve.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the rules -------------------------------------------------------------------------------


def test_coerce_types() -> None:
    assert coerce("keep_alive_timeout", "2.5", "env") == 2.5
    assert coerce("keep_alive_timeout", 3, "file") == 3.0
    assert coerce("max_connections", "7", "env") == 7
    assert coerce("access_log", "off", "env") is False
    assert coerce("access_log", True, "file") is True
    assert coerce("bind", "127.0.0.1:1, 127.0.0.1:2", "env") == ("127.0.0.1:1", "127.0.0.1:2")
    assert coerce("bind", ["[::1]:1", "127.0.0.1:2"], "file") == ("[::1]:1", "127.0.0.1:2")
    assert coerce("backend", "trio", "env") == "trio"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("keep_alive_timeout", "soon", "expected a number"),
        ("max_connections", 1.5, "whole number"),
        ("max_connections", True, "expected a number"),
        ("access_log", "maybe", "true or false"),
        ("backend", "tokio", "not one of"),
        ("bind", [1, 2], "expected strings"),
        ("root_path", 5, "expected a string"),
    ],
)
def test_coerce_refuses(name: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        coerce(name, value, "SRC")
    assert str(info.value).startswith(f"SRC: {name}: ")
    assert "\n" not in str(info.value)


def test_file_keys_with_dashes_or_underscores(tmp_path: Path) -> None:
    path = write(tmp_path, 'keep-alive-timeout = 2\nroot_path = "/x"\nbind = [":1", ":2"]\n')
    assert read_config_file(path) == {
        "keep_alive_timeout": 2.0,
        "root_path": "/x",
        "bind": (":1", ":2"),
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("no_such_setting = 1\n", "unknown setting 'no_such_setting'"),
        ('config = "other.toml"\n', "unknown setting 'config'"),
        ('app = "x:y"\n', "unknown setting 'app'"),
        ("keep_alive_timeout = \n", "not valid TOML"),
        ('max_connections = "many"\n', "max_connections: expected a number"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        read_config_file(write(tmp_path, text))


def test_environment() -> None:
    environ = {
        "QUICSERVE_KEEP_ALIVE_TIMEOUT": "9",
        "QUICSERVE_INSECURE_BIND": "127.0.0.1:1,127.0.0.1:2",
        "QUICSERVE_DATA_DIR": "/elsewhere",  # another part of quicserve: ignored here
        "QUICSERVE_NO_SUCH": "1",
        "FORWARDED_ALLOW_IPS": "10.0.0.1",
    }
    assert read_environment(environ) == {
        "keep_alive_timeout": 9.0,
        "insecure_bind": ("127.0.0.1:1", "127.0.0.1:2"),
        "forwarded_allow_ips": "10.0.0.1",
    }
    # The QUICSERVE_ name wins over the name Uvicorn and Gunicorn read.
    environ["QUICSERVE_FORWARDED_ALLOW_IPS"] = "*"
    assert read_environment(environ)["forwarded_allow_ips"] == "*"


def test_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, 'root_path = "/file"\nkeep_alive_timeout = 1\nheader_read_timeout = 2\n')
    environ = {
        "QUICSERVE_CONFIG": path,
        "QUICSERVE_ROOT_PATH": "/env",
        "QUICSERVE_KEEP_ALIVE_TIMEOUT": "3",
    }
    config = resolve({"root_path": "/cli"}, environ)
    assert config.root_path == "/cli"  # command line > environment
    assert config.keep_alive_timeout == 3.0  # environment > file
    assert config.header_read_timeout == 2.0  # file > defaults
    assert config.graceful_timeout == Config().graceful_timeout  # defaults
    assert resolve({}, {}) == Config()


def test_rules_that_span_sources() -> None:
    with pytest.raises(ConfigError, match="--keep-alive-timeout must be positive"):
        resolve({}, {"QUICSERVE_KEEP_ALIVE_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match=r"--forwarded-allow-ips: 'proxy\.local'"):
        resolve({"forwarded_allow_ips": "10.0.0.0/8,proxy.local"}, {})
    with pytest.raises(ConfigError, match="--metrics-bind"):
        resolve({"metrics_bind": "nowhere"}, {})


# -- the real command --------------------------------------------------------------------------


def test_cli_layers_file_env_and_flags(spawn: cli.Spawn, backend: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'backend = "{backend}"\ninsecure_bind = ["127.0.0.1:0"]\n'
        'root_path = "/file"\naccess_log = true\n',
    )
    server = spawn(
        cli.APP,
        "--config",
        path,
        "--root-path",
        "/cli",
        extra_env={"QUICSERVE_ROOT_PATH": "/env", "QUICSERVE_ACCESS_LOG": "no"},
    )
    response = httpx.get(cli.local_url(server.port(), "/scope"), timeout=5)
    assert response.status_code == 200
    assert json.loads(response.content)["root_path"] == "/cli"  # flag > env > file
    stderr = cli.stop_and_read_stderr(server)
    assert cli.access_lines(stderr) == []  # env (no) > file (true)
    assert "Listening on http://127.0.0.1:" in stderr  # the bind came from the file


@pytest.mark.parametrize(
    ("file_text", "environ", "needles"),
    [
        pytest.param("bogus = 1\n", {}, ["unknown setting 'bogus'"], id="unknown-key"),
        pytest.param("bind = \n", {}, ["not valid TOML"], id="bad-toml"),
        pytest.param(
            "",
            {"QUICSERVE_KEEP_ALIVE_TIMEOUT": "soon"},
            ["QUICSERVE_KEEP_ALIVE_TIMEOUT", "expected a number"],
            id="bad-env",
        ),
        pytest.param(
            "",
            {"QUICSERVE_CONFIG": "/nonexistent/q.toml"},
            ["cannot read config file"],
            id="missing-file",
        ),
        pytest.param('forwarded_allow_ips = "a.b"\n', {}, ["--forwarded-allow-ips"], id="bad-ips"),
    ],
)
def test_cli_bad_settings_are_one_line(
    env: dict[str, str],
    tmp_path: Path,
    file_text: str,
    environ: dict[str, str],
    needles: list[str],
) -> None:
    args = [cli.APP, "--insecure-bind", "127.0.0.1:0"]
    if "QUICSERVE_CONFIG" not in environ:
        args += ["--config", write(tmp_path, file_text)]
    result = cli.run_cli({**env, **environ}, *args)
    cli.assert_one_line_error(result, *needles)
    assert "Listening on" not in result.stderr
