"""The README's command-line table lists every flag, so the docs cannot drift from Config."""

from __future__ import annotations

from pathlib import Path

from quicserve.config import config_fields

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_flag_is_documented() -> None:
    missing = [
        "--" + f.name.replace("_", "-")
        for f in config_fields()
        if f.metadata.get("cli", True) is not False
        and f"`--{f.name.replace('_', '-')}" not in README
    ]
    assert missing == []


def test_readme_names_the_two_commands() -> None:
    assert "pip install -e . && quicserve examples.hello:app" in README
    assert "pip install -e '.[test]' && python -m pytest" in README
