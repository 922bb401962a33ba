"""API keys (Bearer, X-API-Key, ?api_key=) and the WebSocket Origin allow-list."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers, QueryParams

from server.auth import key_accepted, origin_allowed, presented_key
from server.settings import SecuritySettings

KEYED = SecuritySettings(api_keys=("k1", "second-key"))
OPEN = SecuritySettings()


def _presented(headers: dict[str, str], query: str = "") -> str | None:
    # The types the server passes: case-insensitive headers, parsed query parameters.
    return presented_key(Headers(headers), QueryParams(query))


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({"Authorization": "Bearer k1"}, "", "k1"),
        ({"authorization": "bearer k1"}, "", "k1"),
        ({"Authorization": "Bearer   k1  "}, "", "k1"),
        ({"X-API-Key": "k1"}, "", "k1"),
        ({"x-api-key": "k1"}, "", "k1"),
        ({}, "api_key=k1", "k1"),
        ({}, "other=1&api_key=k%201", "k 1"),
        ({"Authorization": "Bearer k1", "X-API-Key": "k2"}, "api_key=k3", "k1"),
        ({"X-API-Key": "k2"}, "api_key=k3", "k2"),
        # Another scheme or an empty bearer is not a key; fall through to the others.
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "", None),
        ({"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": "k2"}, "", "k2"),
        ({"Authorization": "Bearer "}, "", None),
        ({"Authorization": "Bearer"}, "api_key=k3", "k3"),
        ({"X-API-Key": ""}, "api_key=", None),
        ({}, "", None),
    ],
)
def test_presented_key(headers: dict[str, str], query: str, expected: str | None) -> None:
    assert _presented(headers, query) == expected


def test_without_configured_keys_anything_goes() -> None:
    assert key_accepted(OPEN, None)
    assert key_accepted(OPEN, "whatever")


@pytest.mark.parametrize("key", ["k1", "second-key"])
def test_a_configured_key_is_accepted(key: str) -> None:
    assert key_accepted(KEYED, key)


@pytest.mark.parametrize("key", [None, "", "k", "k1 ", "K1", "k1k1", "second", "ké1"])
def test_other_keys_are_refused(key: str | None) -> None:
    assert not key_accepted(KEYED, key)


def test_non_ascii_keys_compare_without_error() -> None:
    security = SecuritySettings(api_keys=("clé-ünïcode",))
    assert key_accepted(security, "clé-ünïcode")
    assert not key_accepted(security, "cle-unicode")


def test_any_origin_without_an_allow_list() -> None:
    assert origin_allowed(OPEN, "https://anywhere.example")
    assert origin_allowed(OPEN, None)


ALLOWING = SecuritySettings(allowed_origins=("https://app.example", "http://localhost:3000/"))


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example",
        "https://app.example/",
        "http://localhost:3000",
        "http://localhost:3000/",
        None,  # game engines and scripts send no Origin
    ],
)
def test_listed_origins_and_no_origin_are_allowed(origin: str | None) -> None:
    assert origin_allowed(ALLOWING, origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example",  # another scheme
        "https://app.example.evil.example",
        "https://app.example:8443",
        "http://localhost:3001",
        "null",  # sandboxed iframes and file:// pages
        "",
    ],
)
def test_other_origins_are_refused(origin: str) -> None:
    assert not origin_allowed(ALLOWING, origin)
