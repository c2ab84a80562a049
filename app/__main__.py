"""Command line: ``python -m app serve | pull | models | convert`` (also ``mlx-openai-server``).

Flags are generated from :class:`app.config.Settings`, so every setting is a flag
(``--max-body-bytes``), an env var (``MLX_SERVER_MAX_BODY_BYTES``) or a YAML key. Each
subcommand takes only the settings it uses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.config import Settings, default_in_words
from app.core.config_errors import ConfigError, describe
from app.core.request_log import setup_logging
from app.lifecycle.registry import RegistryError

log = logging.getLogger("app")
# transformers (imported by mlx-lm for tokenizers) warns that PyTorch is absent and that
# prompts exceed a tokenizer's length: neither applies here (over-long prompts get a 400).
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


DESCRIPTION = (
    "An OpenAI-compatible HTTP server whose models run on Apple's MLX (Metal, Linux CPUs, "
    "NVIDIA). Every flag is also an environment variable (MLX_SERVER_<NAME>) and a key of "
    "a --config YAML file."
)
# The settings each subcommand other than serve uses (serve takes them all).
COMMAND_SETTINGS = {
    "pull": ("models_file", "cache_dir", "offline", "log_level"),
    "models": ("models_file", "cache_dir", "host", "port", "log_level"),
    "convert": ("models_file", "cache_dir", "offline", "blas", "blas_threads", "log_level"),
}


def _default_text(name: str) -> str:
    value, words = default_in_words(name)
    if words is None:
        return str(value)
    return f"{value} ({words})" if words.endswith(" MiB") else words


def _add_settings_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML settings file (same keys as the flags)")
    for name, field in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or name.replace('_', ' ')} (default: "
        help_text = (help_text + _default_text(name) + ")").replace("%", "%%")
        if field.annotation is bool and name.startswith("no_"):  # --no-ui: a plain switch
            parser.add_argument(flag, dest=name, action="store_const", const=True,
                                default=None, help=help_text)
        elif field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                                help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    if args.config:
        os.environ["MLX_SERVER_CONFIG"] = args.config
    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(describe(exc, Settings, args.config or "settings")) from exc


def _configure_backend(settings: Settings) -> None:
    """Pick the BLAS before MLX is imported, then log what MLX will run on."""
    from app.core.blas import configure_blas
    from app.core.mlx_backend import import_mlx_core

    report = configure_blas(settings.blas, settings.blas_threads)
    mx = import_mlx_core()

    if mx.metal.is_available():
        backend = "metal"
    elif hasattr(mx, "cuda") and mx.cuda.is_available():
        backend = "cuda"
    else:
        backend = "cpu"
    log.info(
        "MLX %s, %s backend; BLAS: %s, %s thread(s)",
        mx.__version__, backend, report.backend, report.threads or "-",
        extra={"event": "backend", "backend": backend, "mlx": mx.__version__,
               "device": str(mx.default_device()), "blas": report.backend,
               "blas_library": report.library, "blas_threads": report.threads},
    )
    log.debug("BLAS library %s: %s", report.library or "-", report.detail)


def cmd_serve(settings: Settings) -> int:
    from app.lifecycle.registry import ModelRegistry

    registry = ModelRegistry.load(settings.models_file)  # a typo fails here, in one line
    _configure_backend(settings)
    import uvicorn

    from app.api.http_protocol import protocol_class
    from app.core.fd_limit import (
        connection_cap,
        import_mlx_lm_keeping_nofile,
        raise_nofile_limit,
    )
    from app.core.lifecycle import make_server

    import_mlx_lm_keeping_nofile()  # before anything else imports it
    from app.main import create_app

    max_connections = connection_cap(settings.max_connections, raise_nofile_limit())
    app = create_app(settings, registry)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the logging set up by setup_logging
        access_log=False,  # the middleware writes one JSON line per request instead
        # h11, with envelopes for unparseable requests, a header deadline, a connection cap
        http=protocol_class(settings.header_timeout_s, max_connections),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        # The drain happens before uvicorn's shutdown; this only bounds the last writes.
        timeout_graceful_shutdown=10,
    )
    server = make_server(config, app.state.lifecycle)
    server.run()
    if getattr(app.state, "failed_preloads", None):
        return 4  # --require-models and a preload model failed (logged)
    return 0 if server.started else 3


def cmd_pull(settings: Settings, ids: list[str]) -> int:
    from app.lifecycle.manager import resolve_model_path
    from app.lifecycle.registry import ModelRegistry
    from app.models.sources.resolve import ModelSourceError

    registry = ModelRegistry.load(settings.models_file)
    specs = [s for s in registry if not ids or s.id in ids or set(ids) & set(s.aliases)]
    if ids and not specs:
        print(f"no model named {', '.join(ids)} in the registry", file=sys.stderr)
        return 2
    status = 0
    for spec in specs:
        try:
            path = resolve_model_path(spec, settings)
        except ModelSourceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{spec.id}: {path}")
    return status


def cmd_models(settings: Settings) -> int:
    from app.lifecycle.catalog import model_rows
    from app.lifecycle.registry import ModelRegistry

    rows = [("ID", "TYPE", "CAPABILITIES", "STATE", "SOURCE")]
    rows += model_rows(ModelRegistry.load(settings.models_file), settings)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[-1])
    return 0


def cmd_convert(settings: Settings, args: argparse.Namespace) -> int:
    """Write a language model as an mlx-lm directory (for mlx_lm.load / mlx_lm.server)."""
    source = args.source or args.model_alias or "default"
    out = args.out_dir or args.out_alias
    if args.source and args.model_alias and args.source != args.model_alias:
        print("error: give the source once (positionally or with --model)", file=sys.stderr)
        return 2
    if out is None or (args.out_dir and args.out_alias and args.out_dir != args.out_alias):
        print("error: give the output directory once (positionally or with --out)",
              file=sys.stderr)
        return 2
    _configure_backend(settings)
    import shutil

    from app.lifecycle.convert import ConvertError, convert
    from app.models.sources.resolve import ModelSourceError

    if args.force and out.is_dir() and (out / "config.json").is_file():
        shutil.rmtree(out)  # only ever an earlier mlx-lm directory
    try:
        bits = args.quantize
        convert(source, out, settings=settings, dtype=args.dtype,
                quantize=int(bits) if bits and bits.isdigit() else bits,
                group_size=args.group_size)
    except (ConvertError, ModelSourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlx-openai-server", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the HTTP server", description="Run the server.")
    pull = sub.add_parser("pull", help="fetch registry models into the cache",
                          description="Fetch registry models into the cache (e.g. before "
                          "going offline).")
    pull.add_argument("ids", nargs="*", help="model ids or aliases (default: all)")
    models = sub.add_parser("models", help="list the registry",
                            description="List the registry's models, whether each is cached, "
                            "and which a server on --host/--port has loaded.")
    convert = sub.add_parser("convert", help="write a language model as an mlx-lm directory",
                             description="Write a language model as an mlx-lm directory (for "
                             "mlx_lm.load / mlx_lm.server): convert SOURCE OUT_DIR.")
    convert.add_argument("source", nargs="?", help="registry model id, .gguf file, mlx-lm "
                         "directory, or pypi:/package:/hf: source (default: 'default')")
    convert.add_argument("out_dir", nargs="?", type=Path, help="new or empty output directory")
    convert.add_argument("--model", dest="model_alias", help=argparse.SUPPRESS)
    convert.add_argument("--out", dest="out_alias", type=Path, help=argparse.SUPPRESS)
    convert.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                         default="float32", help="floating-point dtype of the written weights")
    convert.add_argument("--quantize", choices=("2", "3", "4", "5", "6", "8", "gguf"),
                         metavar="BITS", help="quantize linear/embedding layers with mlx-lm "
                         "(affine, 2-8 bits), or 'gguf': keep a GGUF's own quantization")
    convert.add_argument("--group-size", type=int, choices=(32, 64, 128), default=64)
    convert.add_argument("--force", action="store_true",
                         help="replace OUT_DIR if it already holds an mlx-lm model")
    _add_settings_flags(serve, None)
    for name, command in (("pull", pull), ("models", models), ("convert", convert)):
        _add_settings_flags(command, COMMAND_SETTINGS[name])
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format, settings.access_log)
    if args.command == "serve":
        try:
            status = cmd_serve(settings)
        except (ConfigError, RegistryError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
        # A clean exit must report 0; MLX/OpenBLAS threads can abort the interpreter's
        # own finalization ("terminate called without an active exception"), so skip it:
        # everything is stopped and the logs are flushed here.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    try:
        if args.command == "pull":
            return cmd_pull(settings, args.ids)
        if args.command == "models":
            return cmd_models(settings)
        return cmd_convert(settings, args)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx-openai-server-lab")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
