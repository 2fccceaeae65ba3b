"""``pagedkv serve``: the OpenAI-compatible server on uvicorn.

Shutdown (SIGINT/SIGTERM) is uvicorn's: it stops accepting connections, gives in-flight
requests ``--graceful-timeout`` seconds, then the app's lifespan aborts what is left and stops
the engine loop; the command exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from pagedkv.errors import InvalidArgumentError


def add_serve_parser(sub: Any) -> None:
    from pagedkv.cli_options import add_engine_arguments, add_model_arguments

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with Prometheus metrics",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument(
        "--served-model-name",
        default=None,
        help="model id clients send (default: the model's name)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="refuse new requests with 503 while this many wait",
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish on shutdown",
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    add_engine_arguments(p)
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pagedkv.cli_setup import engine_config_from, load_cli_model
    from pagedkv.engine import AsyncLLMEngine, LLMEngine
    from pagedkv.server.app import create_app

    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port: expected 0..65535, got {args.port}")
    if args.max_waiting < 1:
        raise InvalidArgumentError(f"--max-waiting: expected >= 1, got {args.max_waiting}")
    if args.threads < 0:
        raise InvalidArgumentError(f"--threads: expected an int >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # process-wide: the engine thread uses it too
    config = engine_config_from(args)
    loaded = load_cli_model(args.model, args.dtype)
    engine = AsyncLLMEngine(LLMEngine(loaded, config))
    name = args.served_model_name or loaded.name
    app = create_app(engine, model_name=name, max_waiting=args.max_waiting)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler
        # that was in place before it started (the default one would end us with -15): let
        # that one ignore it, so the command exits 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0
