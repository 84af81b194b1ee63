"""The `graft serve` command line: vLLM's flags where they mean the same thing.

Startup loads the base model and every `--lora-modules` adapter before the server listens, so
`GET /health` answering means the model and the startup adapters are ready. A startup failure
(missing model, bad adapter) exits with status 1 and one message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from graft.core.settings import SERVER_API_KEY_ENV as API_KEY_ENV
from graft.dataplane.argtypes import positive_int
from graft.dataplane.serve import protocol

EXIT_STARTUP_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft serve",
        description="OpenAI-compatible reference model server (transformers + peft, CPU-capable) "
        "with vLLM's multi-LoRA API.",
    )
    parser.add_argument("--model", required=True, help="base model directory or file:// URI")
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="name(s) the base model answers to; the first is used in responses "
        "(default: the --model value)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--enable-lora", action="store_true", help="allow LoRA adapters (startup and at run time)"
    )
    parser.add_argument(
        "--lora-modules",
        nargs="+",
        action="extend",
        default=[],
        metavar="MODULE",
        help='adapters to load at startup: name=path or \'{"name": ..., "path": ..., '
        '"base_model_name": ...}\'',
    )
    parser.add_argument(
        "--max-loras",
        type=positive_int,
        default=1,
        help="most adapters loaded at once; loading one more is refused with 400 (1)",
    )
    parser.add_argument(
        "--max-lora-rank",
        type=positive_int,
        default=16,
        help="adapters of a higher rank are refused (16)",
    )
    parser.add_argument(
        "--max-model-len",
        type=positive_int,
        default=None,
        help="context length (prompt + completion); default: the model's",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto = float32, the safe choice on a CPU)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer <key>' on /v1/ (default: ${API_KEY_ENV}, "
        "which is how Graft's pods pass it, so it is not on the command line)",
    )
    parser.add_argument(
        "--uvicorn-log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model server never downloads at run time
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        modules = [protocol.parse_lora_module(m) for m in args.lora_modules]
    except ValueError as exc:
        return _startup_failed(str(exc))
    if modules and not args.enable_lora:
        return _startup_failed("--lora-modules needs --enable-lora")
    if len(modules) > args.max_loras:
        return _startup_failed(f"{len(modules)} --lora-modules but --max-loras is {args.max_loras}")
    model_dir = _local(args.model)
    if not (Path(model_dir) / "config.json").is_file():
        return _startup_failed(f"model not found: {model_dir} has no config.json")

    import uvicorn

    from graft.dataplane.serve.app import Models, ServerSettings, create_app
    from graft.dataplane.serve.engine import Engine
    from graft.dataplane.serve.metrics import Metrics

    settings = ServerSettings(
        served_model_names=args.served_model_name or [args.model],
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        api_key=args.api_key,
    )
    print(f"graft serve: loading {model_dir}", file=sys.stderr, flush=True)
    try:
        engine = Engine(model_dir, max_model_len=args.max_model_len, dtype=args.dtype)
    except (OSError, ValueError) as exc:
        return _startup_failed(f"cannot load model {model_dir}: {exc}")

    async def serve() -> int:
        models = Models(settings=settings, engine=engine, metrics=Metrics(args.max_loras))
        for module in modules:
            try:
                await models.load(module.name, module.path, module.base_model_name)
            except protocol.APIError as exc:
                return _startup_failed(f"cannot load LoRA module {module.name}: {exc.message}")
            print(f"graft serve: loaded adapter {module.name}", file=sys.stderr, flush=True)
        config = uvicorn.Config(
            create_app(models),
            host=args.host,
            port=args.port,
            log_level=args.uvicorn_log_level,
            timeout_graceful_shutdown=10,
        )
        server = uvicorn.Server(config)
        await server.serve()
        return 0 if server.started else EXIT_STARTUP_FAILED

    return asyncio.run(serve())


def _local(location: str) -> str:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    return unquote(parsed.path) if parsed.scheme == "file" else location


def _startup_failed(message: str) -> int:
    print(f"graft serve: error: {message}", file=sys.stderr, flush=True)
    return EXIT_STARTUP_FAILED
