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


# ServerSettings field -> (flag, help). Each flag's default and type come from the field, so they live there only.
LIMIT_FLAGS = {
    "max_inputs_per_request": ("--max-inputs", "most texts per request"),
    "max_chars_per_text": ("--max-chars", "most characters per text"),
    "max_request_bytes": ("--max-request-bytes", "largest request body"),
    "max_wait_ms": ("--max-wait-ms", "longest a part-full batch waits for more"),
    "max_queue_texts": ("--max-queue-texts", "texts waiting before requests get 429"),
    "request_timeout_s": ("--request-timeout", "seconds before a waiting request gets 503"),
}
CONNECTION_FLAGS = {
    "max_connections": ("--max-connections", "open connections before the slowest is shed"),
    "max_header_bytes": ("--max-header-bytes", "largest request line plus headers"),
    "max_headers": ("--max-headers", "most headers per request"),
    "header_timeout_s": ("--header-timeout", "seconds to send a request's head"),
    "body_timeout_s": ("--body-timeout", "seconds to send a request's body"),
    "drain_s": ("--drain-seconds", "on SIGTERM/SIGINT, seconds queued work keeps running before it is answered 503"),
}
# Fields set by the model options every model command shares (cli/common.py).
MODEL_FLAGS = {"max_batch_size": "--batch-size", "max_batch_tokens": "--max-batch-tokens"}
FLAGS = {field: flag for field, (flag, _) in (LIMIT_FLAGS | CONNECTION_FLAGS).items()} | MODEL_FLAGS
DEFAULTS = {field.name: field.default for field in dataclasses.fields(ServerSettings)}


def _add_setting_flags(group: argparse._ArgumentGroup, flags: dict[str, tuple[str, str]]) -> None:
    """One flag per :class:`ServerSettings` field, stored under the field's name, with the field's default."""
    for field, (flag, help_text) in flags.items():
        default = DEFAULTS[field]
        group.add_argument(
            flag, dest=field, type=type(default), default=default, help=f"{help_text} (default: {default})"
        )


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
        default=DEFAULTS["default_role"].value,
        help="role for requests that name none (default: none, i.e. no instruction, like Embedder.encode)",
    )
    _add_setting_flags(parser.add_argument_group("limits and batching"), LIMIT_FLAGS)
    _add_setting_flags(parser.add_argument_group("connections (slow or oversized clients)"), CONNECTION_FLAGS)
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
        help="torch CPU threads for the model (default: torch's, one per core, which served the most texts/s; "
        "see docs/performance.md)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The server settings described by ``args``; a refused value raises ``ValueError`` naming its flag."""
    values = {field: getattr(args, field) for field in LIMIT_FLAGS | CONNECTION_FLAGS}
    try:
        return ServerSettings(
            model_name=args.served_model_name or str(args.model),
            default_role=Role.parse(args.default_role),
            api_key=args.api_key or ServerSettings.api_key_from_env(),
            max_batch_size=args.batch_size,
            max_batch_tokens=args.max_batch_tokens,
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
    """Let the batching worker take the GIL within 0.5 ms instead of Python's default 5 ms.

    Why: the request that completes a batch wakes the worker, which then waited out the whole switch interval
    while the event loop kept the GIL and the model stood idle (docs/performance.md, "How we got here"). The
    process belongs to the server, so this global setting is ours to make.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
