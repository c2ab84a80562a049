"""Legacy /v1/completions on the tiny random llama (in-process)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient


def complete(client: TestClient, **body):
    return client.post("/v1/completions", json={"model": "default", "temperature": 0, **body})


def test_string_prompt_default_length_and_shape(client: TestClient):
    resp = complete(client, prompt="The quick brown fox")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16  # OpenAI's default max_tokens
    assert body["htdi"]["model"] == "tiny"


def test_batch_of_prompts_times_n_and_echo(client: TestClient):
    prompts = ["The quick brown fox", "Hello world!"]
    single = [complete(client, prompt=p, max_tokens=4).json()["choices"][0]["text"]
              for p in prompts]
    body = complete(client, prompt=prompts, max_tokens=4, n=2, echo=True).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for i, choice in enumerate(body["choices"]):
        prompt = prompts[i // 2]
        assert choice["text"].startswith(prompt)
        assert choice["text"][len(prompt):] == single[i // 2]


def test_token_id_prompts(client: TestClient):
    tokenizer = client.app.state.manager.models["tiny"].loaded.tokenizer
    ids = tokenizer.encode("Hello world!")
    by_text = complete(client, prompt="Hello world!", max_tokens=5).json()
    by_ids = complete(client, prompt=ids, max_tokens=5).json()
    by_lists = complete(client, prompt=[ids, ids], max_tokens=5).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert [c["text"] for c in by_lists["choices"]] == [by_text["choices"][0]["text"]] * 2
    bad = complete(client, prompt=[10**9])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"


def test_legacy_logprobs_shape(client: TestClient):
    body = complete(client, prompt="Hello world!", max_tokens=4, logprobs=2).json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"][1] == len(lp["tokens"][0])
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                 strict=True):
        assert len(top) <= 3 and all(v <= 0 for v in top.values())
        assert top[token] == value  # the sampled token is always among them


def test_legacy_top_logprobs_always_hold_the_sampled_token(client: TestClient):
    """OpenAI: up to logprobs + 1 entries, the sampled token included (also for
    logprobs: 0, and for an unlikely token drawn at a high temperature)."""
    body = complete(client, prompt="Hello world!", max_tokens=6, logprobs=0).json()
    lp = body["choices"][0]["logprobs"]
    assert [list(top) for top in lp["top_logprobs"]] == [[t] for t in lp["tokens"]]
    body = complete(client, prompt="Hello world!", max_tokens=16, logprobs=1,
                    temperature=2.0, seed=3).json()
    lp = body["choices"][0]["logprobs"]
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                 strict=True):
        assert 1 <= len(top) <= 2 and top[token] == value
    assert any(len(top) == 2 for top in lp["top_logprobs"])  # a sample that was not the best


def test_stream_matches_and_ends_properly(client: TestClient):
    full = complete(client, prompt="Numbers: 0 1 2", max_tokens=8).json()["choices"][0]["text"]
    resp = complete(client, prompt="Numbers: 0 1 2", max_tokens=8, stream=True,
                    stream_options={"include_usage": True})
    lines = [ln for ln in resp.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(e["object"] == "text_completion" for e in events)
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert text == full
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 8 and "htdi" in events[-1]


def test_stream_of_several_prompts_and_choices_matches_the_plain_answer(client: TestClient):
    args = {"prompt": ["Numbers: 0 1 2", "Letters: a b"], "n": 2, "max_tokens": 6, "seed": 3,
            "temperature": 0.9}
    plain = complete(client, **args).json()
    resp = complete(client, stream=True, stream_options={"include_usage": True}, **args)
    lines = [ln for ln in resp.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    texts, finishes = {}, {}
    for event in events[:-1]:
        (choice,) = event["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"] is not None:
            assert choice["index"] not in finishes  # one finish per choice
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in plain["choices"]}
    assert sorted(finishes) == [0, 1, 2, 3]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: events[-1]["usage"][k] for k in counts} == {k: plain["usage"][k] for k in counts}
    assert events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # 2nd time: cached


def test_unsupported_parameters_are_refused(client: TestClient):
    for extra, param in [({"suffix": "x"}, "suffix"), ({"best_of": 3}, "best_of"),
                         ({"logprobs": 21}, "logprobs"), ({"max_tokens": -1}, "max_tokens")]:
        resp = complete(client, prompt="Hi", **extra)
        assert resp.status_code == 400, (extra, resp.text)
        assert resp.json()["error"]["param"] == param
    assert complete(client, prompt=[]).status_code == 400
    assert complete(client, prompt="").status_code == 400


def test_context_length_errors_name_prompt(client: TestClient):
    for body in ({"prompt": "word " * 1100}, {"prompt": [5] * 1000, "max_tokens": 30}):
        resp = complete(client, **{"max_tokens": 4, **body})
        error = resp.json()["error"]
        assert resp.status_code == 400 and error["code"] == "context_length_exceeded", resp.text
        assert error["param"] == "prompt"


def _events(resp) -> list[dict]:
    return [json.loads(line[6:]) for line in resp.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_prompt_scoring_echo_with_logprobs_and_no_tokens(client: TestClient):
    """What lm-eval-harness sends for loglikelihood: echo + logprobs + max_tokens 0."""
    prompt = "The capital of France is Paris."
    ids = client.post("/tokenize", json={"model": "default", "prompt": prompt}).json()["tokens"]
    body = complete(client, prompt=prompt, echo=True, logprobs=1, max_tokens=0).json()
    (choice,) = body["choices"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == len(ids)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) and "".join(lp["tokens"]) == prompt
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v < 0 for v in lp["token_logprobs"][1:])
    for token, value, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:],
                                 lp["top_logprobs"][1:], strict=True):
        assert top[token] == value and len(top) <= 2
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"][-1] == len(prompt) - len(lp["tokens"][-1])

    # with generated tokens after the prompt: the same prompt scores, then the completion's
    both = complete(client, prompt=prompt, echo=True, logprobs=1, max_tokens=3).json()
    (choice,) = both["choices"]
    blp = choice["logprobs"]
    assert blp["token_logprobs"][:len(ids)] == lp["token_logprobs"]
    assert len(blp["tokens"]) == len(ids) + 3 and "".join(blp["tokens"]) == choice["text"]
    assert blp["text_offset"] == sorted(blp["text_offset"])

    # streamed: the echo (with its logprobs) first, then the completion, same numbers
    resp = complete(client, prompt=prompt, echo=True, logprobs=1, max_tokens=3, stream=True)
    chunks = [e["choices"][0] for e in _events(resp) if e["choices"]]
    assert chunks[0]["text"] == prompt
    assert chunks[0]["logprobs"]["token_logprobs"] == lp["token_logprobs"]
    streamed = [v for c in chunks if c["logprobs"] for v in c["logprobs"]["token_logprobs"]]
    assert streamed == blp["token_logprobs"]
    assert "".join(c["text"] for c in chunks) == choice["text"]

    # echo without logprobs and no tokens: the prompt back; token-id prompts too
    plain = complete(client, prompt=ids, echo=True, max_tokens=0).json()["choices"][0]
    assert plain["text"] == prompt and plain["logprobs"] is None
    chat = client.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
    assert chat.status_code == 400  # chat has no use for zero tokens


def test_token_strs_are_the_vocabulary_strings_even_for_byte_fragments(client: TestClient):
    """Decoding a token alone loses partial UTF-8 (U+FFFD); the vocabulary's strings and
    the raw bytes do not."""
    text = "Fox \u00e9t\u00e9 \U0001f98a"
    body = client.post("/tokenize", json={"model": "default", "prompt": text,
                                          "return_token_strs": True}).json()
    vocab = client.app.state.manager.models["tiny"].loaded.tokenizer.vocab
    assert [vocab[s] for s in body["token_strs"]] == body["tokens"]
    assert not any("\ufffd" in s for s in body["token_strs"])
    assert bytes(b for t in body["token_bytes"] for b in t) == text.encode()
    plain = client.post("/tokenize", json={"model": "default", "prompt": text}).json()
    assert plain["token_strs"] is None and "token_bytes" not in plain


def test_tokenize_detokenize_round_trip(client: TestClient):
    resp = client.post("/tokenize", json={"model": "default", "prompt": "Hello world!",
                                          "return_token_strs": True})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 1024
    vocab = client.app.state.manager.models["tiny"].loaded.tokenizer.vocab
    assert [vocab[s] for s in body["token_strs"]] == body["tokens"]  # vocabulary strings
    assert bytes(b for t in body["token_bytes"] for b in t) == b"Hello world!"
    back = client.post("/detokenize", json={"model": "default", "tokens": body["tokens"]})
    assert back.json()["prompt"] == "Hello world!"
    chat = client.post("/tokenize", json={
        "model": "default", "messages": [{"role": "user", "content": "Hi"}]}).json()
    tokenizer = client.app.state.manager.models["tiny"].loaded.tokenizer
    assert tokenizer.decode(chat["tokens"]).endswith("<|im_start|>assistant\n")
    assert client.post("/detokenize", json={"model": "default", "tokens": [-1]}).status_code == 400
    assert client.post("/tokenize", json={"model": "default"}).status_code == 400
    assert client.post("/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404
