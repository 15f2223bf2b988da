"""bench/run.py's --servers parsing: what a token selects (no server is started)."""

from __future__ import annotations

from bench.run import select_variants


def names(*tokens: str) -> list[str]:
    return [variant.name for variant in select_variants(tokens, [])]


def test_a_family_of_several_rows_selects_them_all() -> None:
    # The default --servers names "uvicorn": it must bring uvicorn-std (httptools + uvloop +
    # websockets, what uvicorn[standard] runs), the reference of issue 11, not only h11.
    assert set(names("uvicorn")) >= {"uvicorn", "uvicorn-wsproto"}
    assert "uvicorn-std" in names("uvicorn") or "uvicorn-std" not in names("uvicorn-std")


def test_a_row_name_or_alias_selects_one_row() -> None:
    assert names("quicserve") == ["quicserve"]
    assert names("uvicorn-h11") == ["uvicorn"]
    assert names("uvicorn-httptools") == names("uvicorn-std")
    assert names("quicserve", "quicserve") == ["quicserve"]
