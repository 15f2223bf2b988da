"""Proxy headers (``--proxy-headers``): the parser's rules, then the middleware over real
sockets on asyncio, uvloop and trio, with httpx (HTTP/1.1) and curl (HTTP/2 over TLS)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from quicserve.addresses import TrustedPeers, parse_trusted
from quicserve.certs import DevCertificate
from quicserve.proxy import (
    apply_proxy_headers,
    forwarded_facts,
    parse_forwarded,
    parse_node,
)

from .apps import respond
from .helpers import curl, running_server

LOCAL = TrustedPeers("127.0.0.1,::1")


def facts(trusted: TrustedPeers = LOCAL, **headers: str) -> tuple[Any, ...]:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return forwarded_facts(raw, trusted)


# -- the rules -------------------------------------------------------------------------------


def test_trusted_peers() -> None:
    trusted = parse_trusted("10.0.0.0/8, 192.168.1.1 ,2001:db8::/32")
    assert "10.1.2.3" in trusted
    assert "192.168.1.1" in trusted
    assert "192.168.1.2" not in trusted
    assert "2001:db8::5" in trusted
    assert "::ffff:10.0.0.1" in trusted  # IPv4-mapped peers of a dual-stack socket
    assert "_hidden" not in trusted
    assert "unknown" not in trusted
    assert None not in trusted
    assert "anything" in parse_trusted("*")
    with pytest.raises(ValueError, match=r"'proxy\.local'"):
        parse_trusted("10.0.0.1,proxy.local")


def test_parse_forwarded_rfc7239_examples() -> None:
    # RFC 7239 §4 and §7.1 examples: quoting, case, several elements and parameters.
    assert parse_forwarded('for="_gazonk"') == [{"for": "_gazonk"}]
    assert parse_forwarded('For="[2001:db8:cafe::17]:4711"') == [
        {"for": "[2001:db8:cafe::17]:4711"}
    ]
    assert parse_forwarded("for=192.0.2.60;proto=http;by=203.0.113.43") == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}
    ]
    assert parse_forwarded("for=192.0.2.43, for=198.51.100.17") == [
        {"for": "192.0.2.43"},
        {"for": "198.51.100.17"},
    ]
    # A comma or semicolon inside quotes does not split.
    assert parse_forwarded('for="a,b;c";host=x') == [{"for": "a,b;c", "host": "x"}]


@pytest.mark.parametrize(
    ("node", "parsed"),
    [
        ("192.0.2.43", ("192.0.2.43", 0)),
        ("192.0.2.43:8080", ("192.0.2.43", 8080)),
        ("[2001:db8:cafe::17]:4711", ("2001:db8:cafe::17", 4711)),
        ("[2001:db8:cafe::17]", ("2001:db8:cafe::17", 0)),
        ("2001:db8::1", ("2001:db8::1", 0)),  # X-Forwarded-For style
        ("_gazonk", ("_gazonk", 0)),
        ("_SEVKISEK:_port", ("_SEVKISEK", 0)),
        ("unknown", ("unknown", 0)),
        ("[not-ipv6]:1", None),
        ("a b", None),
        ("", None),
    ],
)
def test_parse_node(node: str, parsed: tuple[str, int] | None) -> None:
    assert parse_node(node) == parsed


def test_forwarded_takes_the_rightmost_untrusted_hop_and_its_proto_and_host() -> None:
    trusted = TrustedPeers("127.0.0.1,10.0.0.0/8")
    header = (
        "for=198.51.100.1;proto=http;host=spoofed.example, "
        'for="[2001:db8::7]:4711";proto=https;host=shop.example, '
        "for=10.0.0.2;proto=http;host=inner"
    )
    assert facts(trusted, forwarded=header) == (
        ("2001:db8::7", 4711),
        "https",
        b"shop.example",
    )
    # Everything trusted: the left-most hop is the client.
    assert facts(parse_trusted("*"), forwarded=header)[0] == ("198.51.100.1", 0)
    # An obfuscated client is still the client.
    assert facts(trusted, forwarded="for=_hidden;proto=https")[:2] == (("_hidden", 0), "https")


def test_forwarded_wins_over_x_forwarded() -> None:
    result = facts(forwarded="for=192.0.2.1;proto=https", x_forwarded_for="192.0.2.99")
    assert result[0] == ("192.0.2.1", 0)


def test_x_forwarded_for_proto_and_host() -> None:
    trusted = TrustedPeers("10.0.0.0/8")
    assert facts(
        trusted,
        x_forwarded_for="203.0.113.9, 198.51.100.2, 10.0.0.3",
        x_forwarded_proto="http, https, http",
        x_forwarded_host="a, b, c",
    ) == (("198.51.100.2", 0), "https", b"b")
    # Lists of other lengths: the right-most entry (written by the nearest proxy).
    assert facts(trusted, x_forwarded_for="203.0.113.9, 10.0.0.3", x_forwarded_proto="https") == (
        ("203.0.113.9", 0),
        "https",
        None,
    )
    # A malformed hop: we cannot tell who is behind it, so the client stays as it is.
    assert facts(trusted, x_forwarded_for="203.0.113.9, not an ip")[0] is None


def test_apply_rewrites_client_scheme_and_host_header() -> None:
    scope: dict[str, Any] = {
        "type": "websocket",
        "scheme": "ws",
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"forwarded", b"for=192.0.2.1;proto=https;host=example.com"),
        ],
    }
    apply_proxy_headers(scope, LOCAL)
    assert scope["client"] == ("192.0.2.1", 0)
    assert scope["scheme"] == "wss"
    assert (b"host", b"example.com") in scope["headers"]
    assert (b"host", b"127.0.0.1:8000") not in scope["headers"]
    assert scope["server"] == ("127.0.0.1", 8000)  # our listener, unchanged
    # Garbage is ignored, not an error.
    scope["headers"] = [(b"x-forwarded-proto", b"gopher"), (b"x-forwarded-host", b"a b/c")]
    apply_proxy_headers(scope, LOCAL)
    assert scope["scheme"] == "wss"
    assert scope["headers"] == [(b"x-forwarded-proto", b"gopher"), (b"x-forwarded-host", b"a b/c")]


# -- the middleware on a real server ---------------------------------------------------------


async def scope_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = dict(scope["headers"])
    view = {
        "client": list(scope["client"]),
        "scheme": scope["scheme"],
        "host": headers.get(b"host", b"").decode(),
    }
    await respond(send, 200, json.dumps(view).encode())


PROXY_HEADERS = {
    "x-forwarded-for": "203.0.113.7",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "public.example",
}


@pytest.mark.anyio
async def test_trusted_proxy_sets_client_scheme_host(anyio_backend: object) -> None:
    async with running_server(scope_app, proxy_headers=True) as srv:
        async with httpx.AsyncClient() as client:
            response = await client.get(srv.url("/"), headers=PROXY_HEADERS)
    assert response.json() == {
        "client": ["203.0.113.7", 0],
        "scheme": "https",
        "host": "public.example",
    }


@pytest.mark.anyio
async def test_untrusted_peer_is_ignored(anyio_backend: object) -> None:
    async with running_server(
        scope_app, proxy_headers=True, forwarded_allow_ips="10.0.0.0/8"
    ) as srv:
        async with httpx.AsyncClient() as client:
            response = await client.get(srv.url("/"), headers=PROXY_HEADERS)
    view = response.json()
    assert view["client"][0] == "127.0.0.1" and view["client"][1] > 0
    assert view["scheme"] == "http"
    assert view["host"].startswith("127.0.0.1:")


@pytest.mark.anyio
async def test_off_by_default(anyio_backend: object) -> None:
    async with running_server(scope_app) as srv:
        async with httpx.AsyncClient() as client:
            response = await client.get(srv.url("/"), headers=PROXY_HEADERS)
    assert response.json()["client"][0] == "127.0.0.1"


@pytest.mark.client("curl")
@pytest.mark.anyio
async def test_forwarded_over_http2(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with running_server(scope_app, tls=tls_files, proxy_headers=True) as srv:
        code, out, err = await curl(
            "--http2",
            "--cacert",
            str(tls_files.ca_certfile),
            "-H",
            'Forwarded: for="[2001:db8::1]:4711";proto=http;host=h2.example',
            srv.url("/", scheme="https").replace("127.0.0.1", "localhost"),
        )
    assert code == 0, err
    assert json.loads(out) == {
        "client": ["2001:db8::1", 4711],
        "scheme": "http",
        "host": "h2.example",
    }
