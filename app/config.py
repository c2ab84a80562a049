"""Server settings: one pydantic-settings class, the single source of truth.

Values come from (highest priority first) explicit keyword arguments (the CLI),
environment variables ``MLX_SERVER_*``, an optional YAML file named by
``MLX_SERVER_CONFIG`` / ``--config``, then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


def default_cache_dir() -> Path:
    """Model cache root: ``$MLX_SERVER_CACHE_DIR`` or ``$XDG_CACHE_HOME/mlx-openai-server-lab``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlx-openai-server-lab"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``MLX_SERVER_CONFIG`` (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("MLX_SERVER_CONFIG")
        if not path:
            return {}
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping")
        return data


class Settings(BaseSettings):
    """Everything the server can be told. Field names double as CLI flags."""

    model_config = SettingsConfigDict(env_prefix="MLX_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    models_file: Path | None = Field(
        None, description="YAML model registry; built-in defaults when unset"
    )
    cache_dir: Path = Field(default_factory=default_cache_dir)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    offline: bool = Field(False, description="never call pip/hub to fetch a model")

    # Start-up
    preload: bool = Field(True, description="load models marked preload at start-up")
    blas: Literal["auto", "openblas", "off"] = "auto"
    blas_threads: int | None = Field(None, ge=1)
    weights_dtype: Literal["auto", "float32", "float16", "bfloat16", "quantized"] = "auto"
    keep_alive_s: float = Field(
        1800.0, ge=-1, description="idle seconds before a non-preload model unloads (-1: never)"
    )
    memory_budget_bytes: int | None = Field(
        None, ge=0, description="memory for loaded models (default: 75%% of RAM)"
    )

    # Limits (docs/PHASE4_TIER3A_CONTRACT.md lists each)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_tokens_default: int = Field(2048, ge=1, description="cap when a model sets none")
    max_n: int = Field(8, ge=1)
    max_messages: int = Field(1024, ge=1)
    max_stop_sequences: int = Field(16, ge=1)
    max_embedding_inputs: int = Field(2048, ge=1)
    queue_depth: int = Field(256, ge=1, description="waiting requests per model")
    queue_timeout_s: float = Field(600.0, gt=0)

    # Engine
    max_batch_size: int = Field(32, ge=1, description="sequences decoded together")
    prefill_step_size: int = Field(512, ge=16)
    split_phases: bool = Field(
        True,
        description="decode steps and prompt prefills as separate engine steps, so decoded "
        "tokens (first tokens too) are not held back by other prompts' prefill",
    )
    admission_gap_ms: float = Field(
        50.0,
        ge=0,
        description="an idle engine starts once no request arrived for this long (bursts are "
        "prefilled together); 0: at once",
    )
    mlx_cache_limit_bytes: int | None = Field(
        256 * 1024 * 1024, ge=0, description="MLX's pool of freed buffers kept for reuse"
    )
    prefix_cache_bytes: int | None = Field(
        None,
        ge=0,
        description="KV cache kept in RAM for shared prompt prefixes (system prompts, earlier "
        "turns); default: prefix_cache_tokens of the model's KV, at most "
        "prefix_cache_memory_share of the memory budget; 0: off",
    )
    prefix_cache_tokens: int = Field(
        32768, ge=0, description="default prefix-cache RAM budget: this many tokens of the "
        "model's KV cache (measured at load)"
    )
    prefix_cache_memory_share: float = Field(
        0.25, ge=0, le=1, description="cap of the default prefix-cache budget: this share of "
        "the memory budget"
    )
    prefix_cache_scope: Literal["tenant", "shared"] = Field(
        "tenant",
        description="tenant: prompts are cached per API key / X-House-ID / cache_salt (no "
        "tenant sees another's); shared: one cache for every caller",
    )
    prefix_cache_disk: Literal["on", "off"] = Field(
        "on", description="keep evicted prefixes (and all at shutdown) in <cache_dir>/prefix-cache"
    )
    prefix_cache_disk_bytes: int = Field(4 << 30, ge=0, description="disk tier size bound")
    prefix_cache_disk_write_bytes_per_hour: int = Field(
        8 << 30, ge=0, description="disk tier write budget (SSD wear)"
    )

    # Embeddings micro-batching
    embedding_batch_size: int = Field(32, ge=1)
    embedding_batch_wait_ms: float = Field(5.0, ge=0)

    # Security (docs/PHASE4_TIER3A_CONTRACT.md, "Auth")
    api_key: SecretStr | None = Field(
        None, description="API key(s) clients must send as a Bearer token (comma-separated)"
    )
    api_key_file: Path | None = Field(None, description="file with one API key per line")
    metrics_public: bool = Field(False, description="serve /metrics without the API key")
    cors_origins: str | None = Field(
        None, description="comma-separated origins allowed by CORS ('*' for any); off when unset"
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line + headers")
    max_json_depth: int = Field(64, ge=2, description="nesting depth of JSON bodies")

    # Observability and shutdown
    metrics_enabled: bool = Field(True, description="serve Prometheus metrics at /metrics")
    log_format: Literal["text", "json"] = Field("text", description="format of non-request logs")
    access_log: bool = Field(True, description="one JSON line per request on stderr")
    log_prompts: bool = Field(False, description="debug: put prompt text in request logs")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )

    def api_keys(self) -> list[str]:
        """Every accepted key: ``api_key`` (comma-separated) plus ``api_key_file`` lines."""
        keys: list[str] = []
        if self.api_key is not None:
            keys += self.api_key.get_secret_value().split(",")
        if self.api_key_file is not None:
            for line in self.api_key_file.read_text().splitlines():
                if not line.lstrip().startswith("#"):
                    keys.append(line)
        return [k.strip() for k in keys if k.strip()]

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))
