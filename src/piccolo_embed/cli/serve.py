"""``piccolo-embed serve``: an OpenAI-compatible embedding server (FastAPI + uvicorn, one batched model)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from piccolo_embed.cli.common import add_model_arguments, load_embedder
from piccolo_embed.serving.settings import ServerSettings
from piccolo_embed.types import Role

log = logging.getLogger(__name__)

# Python's default is 5 ms; see _share_the_gil for why the server hands the GIL over sooner.
GIL_SWITCH_INTERVAL_S = 0.0005


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve", help="serve embeddings over HTTP: OpenAI-compatible /v1/embeddings and native /embed"
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="", help="model name in responses (default: --model)")
    parser.add_argument(
        "--default-role",
        choices=[r.value for r in Role],
        default=Role.NONE.value,
        help="role for requests that name none (default: none, i.e. no instruction, like Embedder.encode)",
    )
    limits = parser.add_argument_group("limits and batching")
    limits.add_argument("--max-inputs", type=int, default=256, help="most texts per request")
    limits.add_argument("--max-chars", type=int, default=8192, help="most characters per text")
    limits.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024, help="largest request body")
    limits.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a part-full batch waits for more")
    limits.add_argument("--max-queue-texts", type=int, default=4096, help="texts waiting before requests get 429")
    limits.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a waiting request gets 503")
    guard = parser.add_argument_group("connections (slow or oversized clients)")
    guard.add_argument("--max-connections", type=int, default=1024, help="open connections before the slowest is shed")
    guard.add_argument("--max-header-bytes", type=int, default=16 * 1024, help="largest request line plus headers")
    guard.add_argument("--max-headers", type=int, default=100, help="most headers per request")
    guard.add_argument("--header-timeout", type=float, default=10.0, help="seconds to send a request's head")
    guard.add_argument("--body-timeout", type=float, default=60.0, help="seconds to send a request's body")
    guard.add_argument(
        "--drain-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds queued work keeps running before it is answered 503",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: $PICCOLO_EMBED_API_KEY; prefer the variable, arguments show up in ps)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the model (default: torch's default, one per core; on an idle 2-core box "
        "that served 1.7x the texts/s of leaving a core to HTTP, see benchmarks/serve_load.py)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    parser.set_defaults(func=run)


# ServerSettings field -> the flag that sets it, so a refused value is reported by the name the user typed
FLAGS = {
    "max_inputs_per_request": "--max-inputs",
    "max_chars_per_text": "--max-chars",
    "max_request_bytes": "--max-request-bytes",
    "max_batch_size": "--batch-size",
    "max_batch_tokens": "--max-batch-tokens",
    "max_wait_ms": "--max-wait-ms",
    "max_queue_texts": "--max-queue-texts",
    "request_timeout_s": "--request-timeout",
    "max_connections": "--max-connections",
    "max_header_bytes": "--max-header-bytes",
    "max_headers": "--max-headers",
    "header_timeout_s": "--header-timeout",
    "body_timeout_s": "--body-timeout",
    "drain_s": "--drain-seconds",
}


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The server settings described by ``args``; a refused value raises ``ValueError`` naming its flag."""
    values = {field: getattr(args, flag.removeprefix("--").replace("-", "_")) for field, flag in FLAGS.items()}
    try:
        return ServerSettings(
            model_name=args.served_model_name or str(args.model),
            default_role=Role.parse(args.default_role),
            api_key=args.api_key or ServerSettings.api_key_from_env(),
            **values,
        )
    except ValueError as err:
        message = str(err)
        for field, flag in FLAGS.items():
            if message.startswith(f"{field} "):
                message = flag + message.removeprefix(field)
        raise ValueError(message) from None


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted."""
    try:
        from piccolo_embed.serving.app import build_app
        from piccolo_embed.serving.server import serve
    except ImportError as err:
        raise OSError(f"the server needs the 'server' extra: pip install 'piccolo-embed[server]' ({err})") from None
    settings = settings_from_args(args)
    if settings.api_key is None and not _is_loopback(args.host):
        log.warning("listening on %s without an API key: anyone who can reach it can use the model", args.host)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    _check_device(args.device)
    _share_the_gil()
    embedder = load_embedder(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    app = build_app(embedder, settings)
    serve(app, settings, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0


def _check_device(device: str) -> None:
    """Refuse ``--device cuda`` without CUDA in one line, before the model loads."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu or auto")


def _share_the_gil() -> None:
    """Let the batching worker take the GIL within 0.5 ms instead of 5 ms.

    Why: when requests arrive, the submit that completes a batch wakes the worker, which needs the GIL.
    uvloop takes and drops the GIL around every callback and, without a switch request, keeps winning it,
    so the worker waited out Python's whole 5 ms switch interval while the model stood idle (measured
    between a pass's last request and its start, 32 one-text clients on the starter). The process belongs to
    the server, so this global setting is ours to make.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
