"""``piccolo-embed trim-vocab``: keep only the tokens a corpus uses, so the model trains and loads faster."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from piccolo_embed.modeling.roles_io import load_role_specs


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``trim-vocab`` subcommand."""
    parser = subparsers.add_parser(
        "trim-vocab",
        help="shrink a model's vocabulary to the tokens of some texts (texts they cover embed identically)",
    )
    parser.add_argument("--model", required=True, help="local model directory, hub id, or 'starter'")
    parser.add_argument(
        "--corpus",
        required=True,
        nargs="+",
        type=Path,
        help=".txt (one text per line) or .jsonl files (every string value counts: query/pos/neg, sentence1/2, ...)",
    )
    parser.add_argument(
        "--prefix",
        action="append",
        default=None,
        help="instruction prepended at use time (repeatable); default: the model's own role prefixes",
    )
    parser.add_argument("--output", required=True, type=Path, help="directory for the trimmed model")
    parser.set_defaults(func=run)


def corpus_texts(paths: Sequence[Path]) -> Iterator[str]:
    """Every text of the corpus files: lines of .txt files, all string values of .jsonl objects."""
    for path in paths:
        with path.open(encoding="utf-8") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                if path.suffix.lower() not in (".jsonl", ".json"):
                    yield raw.rstrip("\r\n")
                    continue
                try:
                    yield from _strings(json.loads(raw))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def run(args: argparse.Namespace) -> int:
    """Trim, keeping the tokens of every text both bare and behind every instruction prefix."""
    from piccolo_embed.modeling.loading import resolve_model_dir
    from piccolo_embed.modeling.trim import trim_vocabulary

    model_dir = resolve_model_dir(args.model)
    prefixes = args.prefix
    if prefixes is None:
        roles = load_role_specs(model_dir) or {}
        prefixes = [spec.prefix for spec in roles.values()]
    prefixes = sorted({p for p in prefixes if p})
    texts = list(dict.fromkeys(corpus_texts(args.corpus)))
    texts += [prefix + text for prefix in prefixes for text in texts] + prefixes
    report = trim_vocabulary(model_dir, texts, args.output)
    print(f"{report}; written to {args.output}")
    return 0
