"""pagedkv serve: the OpenAI-compatible server on uvicorn.

Start-up: every option is checked and the address is bound before the model loads, so a typo,
a bad --host or a port already in use costs no model load; then the model loads (a line on
stderr says what, and how long it took) and one summary is logged: the model, its context
length, the KV pool, the threads, the KV tiers and the URL.

Shutdown (SIGINT/SIGTERM) is uvicorn's: it stops accepting connections, gives in-flight
requests --graceful-timeout seconds, then ends each one still running with an OpenAI error
(an error event and [DONE] on a stream, a 503 otherwise), and the app's lifespan stops the
engine loop; the command exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from typing import Any

from pagedkv.errors import InvalidArgumentError

log = logging.getLogger("pagedkv.serve")


def add_serve_parser(sub: Any) -> None:
    from pagedkv.cli_options import add_engine_arguments, add_model_arguments, parse_bytes

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with Prometheus metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--served-model-name",
        default=None,
        help="model id clients send (default: the model's name)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="refuse new requests with 503 while this many wait (default 256)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=parse_bytes,
        default=None,
        help="refuse request bodies larger than this with 413, e.g. 8MiB (default 4MiB)",
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish on shutdown (default 10)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's and pagedkv's log level (default info)",
    )
    add_engine_arguments(p)
    p.set_defaults(handler=run_serve)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, bound before the model loads (uvicorn serves
    on it), so a bad host or a port in use is one error line, not a wasted load."""
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"--port: expected 0..65535, got {port}")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidArgumentError(f"--host: cannot resolve {host!r}: {exc}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidArgumentError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def startup_summary(engine: Any, served_name: str, url: str, threads: int) -> str:
    """The one summary line ``pagedkv serve`` logs once the engine is ready."""
    pool = engine.num_usable_blocks
    bs = engine.config.block_size
    tiers = "none"
    if engine.tiers is not None:
        parts = []
        for tier in engine.tiers.cache.tiers:
            where = getattr(tier, "url", None) or getattr(tier, "root", None)
            parts.append(f"{tier.name} {where}" if where else str(tier.name))
        tiers = ", ".join(parts)
    return (
        f"serving {engine.loaded.name} as {served_name!r} at {url}/v1: max_model_len "
        f"{engine.max_model_len}, KV pool {pool} blocks x {bs} tokens = {pool * bs} tokens "
        f"(one request up to {engine.max_request_tokens}), torch threads {threads}, "
        f"KV tiers: {tiers}"
    )


def run_serve(args: argparse.Namespace) -> int:
    from pagedkv.cli_setup import default_threads, engine_config_from

    if args.max_waiting < 1:
        raise InvalidArgumentError(f"--max-waiting: expected >= 1, got {args.max_waiting}")
    if args.graceful_timeout < 0:
        raise InvalidArgumentError(
            f"--graceful-timeout: expected >= 0, got {args.graceful_timeout}"
        )
    sock = bind(args.host, args.port)  # first: it needs no torch import
    try:
        config = engine_config_from(args)  # every engine option, before the model loads
        threads = args.threads if args.threads is not None else default_threads()
        return _serve(args, config, sock, threads)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, config: Any, sock: socket.socket, threads: int) -> int:
    import torch

    from pagedkv.cli_setup import load_cli_model
    from pagedkv.engine import AsyncLLMEngine, LLMEngine
    from pagedkv.engine.llm_engine import freeze_startup_objects
    from pagedkv.server.app import create_app
    from pagedkv.server.drain import draining_server

    if threads:
        torch.set_num_threads(threads)  # process-wide: the engine thread uses it too
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    loaded = load_cli_model(args.model, args.dtype, args.backend)
    engine = AsyncLLMEngine(LLMEngine(loaded, config))
    name = args.served_model_name or loaded.name
    body = {} if args.max_body_bytes is None else {"max_body_bytes": args.max_body_bytes}
    app = create_app(engine, model_name=name, max_waiting=args.max_waiting, **body)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    log.info("%s", startup_summary(engine.engine, name, url, torch.get_num_threads()))
    if threading.current_thread() is threading.main_thread():  # the process is this server's
        freeze_startup_objects()
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler
        # that was in place before it started (the default one would end us with -15): let
        # that one ignore it, so the command exits 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
    # past --graceful-timeout, in-flight requests end with an OpenAI error (drain.py)
    server = draining_server(app, log_level=args.log_level, graceful_timeout=args.graceful_timeout)
    server.run(sockets=[sock])
    return 0
