"""Command line: ``python -m app serve | pull | models | convert`` (also ``mlx-openai-server``).

Flags are generated from :class:`app.config.Settings`, so every setting is a flag
(``--max-body-bytes``), an env var (``MLX_SERVER_MAX_BODY_BYTES``) or a YAML key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from app.config import Settings
from app.core.request_log import setup_logging

log = logging.getLogger("app")


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML settings file (same keys as the flags)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or None
        if field.annotation is bool and name.startswith("no_"):  # --no-ui: a plain switch
            parser.add_argument(flag, dest=name, action="store_const", const=True,
                                default=None, help=help_text)
        elif field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    if args.config:
        os.environ["MLX_SERVER_CONFIG"] = args.config
    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    return Settings(**given)




def _configure_backend(settings: Settings) -> None:
    """Pick the BLAS before MLX is imported, then log what MLX will run on."""
    from app.core.blas import configure_blas

    report = configure_blas(settings.blas, settings.blas_threads)
    import mlx.core as mx

    if mx.metal.is_available():
        backend = "metal"
    elif hasattr(mx, "cuda") and mx.cuda.is_available():
        backend = "cuda"
    else:
        backend = "cpu"
    log.info(
        "MLX %s on %s (%s backend); BLAS: %s (%s, threads %s) %s",
        mx.__version__, mx.default_device(), backend, report.backend, report.library or "-",
        report.threads or "-", report.detail,
        extra={"event": "backend", "backend": backend, "mlx": mx.__version__,
               "device": str(mx.default_device()), "blas": report.backend,
               "blas_library": report.library, "blas_threads": report.threads},
    )


def cmd_serve(settings: Settings) -> int:
    _configure_backend(settings)
    import uvicorn

    from app.api.http_protocol import EnvelopeH11Protocol
    from app.core.lifecycle import make_server
    from app.main import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the logging set up by setup_logging
        access_log=False,  # the middleware writes one JSON line per request instead
        http=EnvelopeH11Protocol,  # h11, with envelopes for unparseable requests
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # The drain happens before uvicorn's shutdown; this only bounds the last writes.
        timeout_graceful_shutdown=10,
    )
    server = make_server(config, app.state.lifecycle)
    server.run()
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
    from app.lifecycle.registry import ModelRegistry

    for spec in ModelRegistry.load(settings.models_file):
        print(f"{spec.id:28} {spec.type:10} {','.join(spec.capabilities):22} {spec.source_name}")
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
    parser = argparse.ArgumentParser(prog="mlx-openai-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    pull = sub.add_parser("pull", help="fetch registry models into the cache")
    pull.add_argument("ids", nargs="*", help="model ids (default: all)")
    models = sub.add_parser("models", help="list the registry")
    convert = sub.add_parser("convert", help="write a language model as an mlx-lm directory")
    convert.add_argument("source", nargs="?", help="registry model id, .gguf file, mlx-lm "
                         "directory, or pypi:/package:/hf: source (default: 'default')")
    convert.add_argument("out_dir", nargs="?", type=Path, help="new or empty output directory")
    convert.add_argument("--model", dest="model_alias", help="the source (older spelling)")
    convert.add_argument("--out", dest="out_alias", type=Path, help="OUT_DIR (older spelling)")
    convert.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                         default="float32", help="floating-point dtype of the written weights")
    convert.add_argument("--quantize", choices=("2", "3", "4", "5", "6", "8", "gguf"),
                         metavar="BITS", help="quantize linear/embedding layers with mlx-lm "
                         "(affine, 2-8 bits), or 'gguf': keep a GGUF's own quantization")
    convert.add_argument("--group-size", type=int, choices=(32, 64, 128), default=64)
    convert.add_argument("--force", action="store_true",
                         help="replace OUT_DIR if it already holds an mlx-lm model")
    for p in (serve, pull, models, convert):
        _add_settings_flags(p)
    args = parser.parse_args(argv)
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format, settings.access_log)
    if args.command == "serve":
        status = cmd_serve(settings)
        # A clean exit must report 0; MLX/OpenBLAS threads can abort the interpreter's
        # own finalization ("terminate called without an active exception"), so skip it:
        # everything is stopped and the logs are flushed here.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    if args.command == "pull":
        return cmd_pull(settings, args.ids)
    if args.command == "models":
        return cmd_models(settings)
    return cmd_convert(settings, args)


if __name__ == "__main__":
    sys.exit(main())
