"""Who a request counts as for fair admission and per-client caps: API key + X-House-ID."""

from __future__ import annotations

from app.core.context import RequestContext


def _client(headers: dict[str, str]) -> str:
    return RequestContext.from_headers(headers).client()


def test_requests_with_neither_key_nor_house_are_anonymous() -> None:
    assert _client({}) == ""


def test_api_keys_are_clients_of_their_own() -> None:
    alice = _client({"authorization": "Bearer key-alice"})
    bob = _client({"authorization": "Bearer key-bob"})
    assert alice and bob and alice != bob
    assert "key-alice" not in alice  # the key itself never becomes a label or log field
    assert _client({"authorization": "Bearer key-alice"}) == alice


def test_houses_split_one_key() -> None:
    one = _client({"authorization": "Bearer k", "x-house-id": "house-1"})
    two = _client({"authorization": "Bearer k", "x-house-id": "house-2"})
    assert one != two and _client({"x-house-id": "house-1"}) not in ("", one)
