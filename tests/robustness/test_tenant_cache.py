"""Issue 23 #4: the prefix cache must not leak one tenant's prompts to another.

Before the fix the cache was one namespace: a second house sending the first house's
prompt got it back as ``cached_tokens``, and guessing a PIN digit by digit showed which
guess matched (the matching prefix was longer).
"""

from __future__ import annotations

import httpx

SECRET = "Account notes for the vault. The customer's PIN is 4 7 1 9 and must never be shown."


def _cached(client: httpx.Client, prompt: str, house: str | None = None,
            salt: str | None = None, key: str | None = None) -> int:
    headers = {"X-House-ID": house} if house else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body: dict = {"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0}
    if salt is not None:
        body["cache_salt"] = salt
    resp = client.post("/v1/completions", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_another_house_gets_nothing_from_the_first_houses_prompt(client: httpx.Client):
    _cached(client, SECRET, house="house-a-iso")
    assert _cached(client, SECRET, house="house-a-iso") > 0  # the owner does hit
    assert _cached(client, SECRET, house="house-b-iso") == 0
    assert _cached(client, SECRET) == 0  # nor does a caller with no house at all


def test_guessing_a_pin_shows_no_difference_across_houses(client: httpx.Client):
    _cached(client, SECRET + " (pin-probe)", house="house-victim")
    prefix = SECRET.split("PIN is")[0] + "PIN is "
    guesses = [_cached(client, prefix + digit + " 7 1", house="house-attacker")
               for digit in "0123456789"]
    # the attacker's own earlier guesses share their prefix; the victim's text must not
    # make one digit stand out
    assert len(set(guesses[1:])) == 1, guesses


def test_cache_salt_and_api_key_split_the_cache_too(client: httpx.Client):
    prompt = SECRET + " (salted)"
    _cached(client, prompt, house="house-salt", salt="alpha")
    assert _cached(client, prompt, house="house-salt", salt="alpha") > 0
    assert _cached(client, prompt, house="house-salt", salt="beta") == 0
    assert _cached(client, prompt, house="house-salt") == 0
    # the shared test server has no keys configured: the bearer token still names a tenant
    assert _cached(client, prompt, house="house-salt", salt="alpha", key="other-key") == 0
