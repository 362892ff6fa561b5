"""``piccolo-embed serve``: an OpenAI-compatible embedding server (FastAPI + uvicorn, one batched model)."""

from __future__ import annotations

import argparse
import dataclasses
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
        help="torch CPU threads for the model, split between the workers (default: torch's default, one per "
        "core; on an idle 2-core box that served 1.7x the texts/s of leaving a core to HTTP, see "
        "benchmarks/serve_load.py)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="batching worker threads, each running forward passes with --threads/workers torch threads "
        "(default 1; on a 2-core box 2 served 7%% more texts/s with 8 texts per request and 2%% fewer with 1, "
        "see docs/performance.md)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The server settings described by ``args`` (validated by :class:`ServerSettings` itself)."""
    return ServerSettings(
        model_name=args.served_model_name or str(args.model),
        default_role=Role.parse(args.default_role),
        max_inputs_per_request=args.max_inputs,
        max_chars_per_text=args.max_chars,
        max_request_bytes=args.max_request_bytes,
        max_batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue_texts=args.max_queue_texts,
        request_timeout_s=args.request_timeout,
        api_key=args.api_key or ServerSettings.api_key_from_env(),
    )


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted."""
    try:
        import uvicorn

        from piccolo_embed.serving.app import build_app
    except ImportError as err:
        raise OSError(f"the server needs the 'server' extra: pip install 'piccolo-embed[server]' ({err})") from None
    settings = settings_from_args(args)
    if settings.api_key is None and not _is_loopback(args.host):
        log.warning("listening on %s without an API key: anyone who can reach it can use the model", args.host)
    _check_counts(args.threads, args.workers)
    _share_the_gil()
    embedder = load_embedder(args)
    workers = _set_threads(args.threads, args.workers)
    app = build_app(embedder, dataclasses.replace(settings, workers=workers))
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0


def _check_counts(threads: int | None, workers: int | None) -> None:
    """Refuse bad counts before the model loads (that can take minutes)."""
    for flag, value in (("--threads", threads), ("--workers", workers)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")


def _set_threads(threads: int | None, workers: int | None) -> int:
    """Give each batching worker an equal part of the torch threads; return how many workers there are.

    Worker threads pick torch's setting up when they first run a pass. Why one worker by default: on the
    2-core box two workers of one thread each served 7% more texts/s than one of two threads with 8 texts
    per request, but 2% fewer with 1 text per request, the case the server's acceptance test most likely
    means; more cores were not measured (docs/performance.md).
    """
    import torch

    workers = workers or 1
    per_worker = max(1, (threads or torch.get_num_threads()) // workers)
    torch.set_num_threads(per_worker)
    log.info("model runs on %d worker(s) of %d torch thread(s)", workers, per_worker)
    return workers


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
