"""Build a long-document retrieval task from a paragraph-level one (by default cmteb-mini's CMRC2018Retrieval).

Each new document is a run of 5-10 consecutive corpus paragraphs (seeded sizes), so a question's paragraph is
often far past the first 512 tokens: truncating models cannot see it, chunked search can. Queries keep their
text; each is relevant to the document holding its paragraph. The output is a task folder in the same format
(``task.json``, ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) plus ``sections.jsonl``, where each
paragraph sits in its document (character span). The data is research-only: write it outside the repository.

    python scripts/build_long_doc_task.py /tmp/tasks/CMRC2018LongDoc [--source DIR] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from piccolo_embed.evaluation.loading import load_task
from piccolo_embed.evaluation.tasks import RetrievalData, TaskType

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "eval" / "cmteb-mini" / "CMRC2018Retrieval"
SEPARATOR = "\n"  # between paragraphs: a line break, which the chunker treats as a sentence end


@dataclass(frozen=True)
class Section:
    """Where one source paragraph sits in a built document."""

    doc_id: str
    paragraph_id: str
    start: int
    end: int


def group_sizes(total: int, low: int, high: int, rng: random.Random) -> list[int]:
    """Sizes in ``[low, high]`` that add up to ``total``; a short tail joins the group before it."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(low, high), total - sum(sizes)))
    if len(sizes) > 1 and sizes[-1] < low:
        tail = sizes.pop()
        sizes[-1] += tail
    return sizes


def build_documents(
    ids: Sequence[str], texts: Sequence[str], sizes: Sequence[int], prefix: str = "LONG"
) -> tuple[dict[str, str], list[Section]]:
    """Join consecutive paragraphs into documents of the given sizes; return them and each paragraph's span."""
    documents: dict[str, str] = {}
    sections: list[Section] = []
    start = 0
    for number, size in enumerate(sizes):
        doc_id = f"{prefix}_{number}"
        parts, offset = [], 0
        for paragraph_id, text in zip(ids[start : start + size], texts[start : start + size], strict=True):
            if parts:
                offset += len(SEPARATOR)
            sections.append(Section(doc_id, paragraph_id, offset, offset + len(text)))
            parts.append(text)
            offset += len(text)
        documents[doc_id] = SEPARATOR.join(parts)
        start += size
    return documents, sections


def long_qrels(
    data: RetrievalData, sections: Sequence[Section], *, every_paragraph: bool = False
) -> dict[str, dict[str, int]]:
    """Each query's judgements moved from its paragraphs to the documents that hold them (best grade kept).

    With ``every_paragraph`` (a subset of the documents), queries with a relevant paragraph outside
    ``sections`` are left out.
    """
    home = {section.paragraph_id: section.doc_id for section in sections}
    qrels: dict[str, dict[str, int]] = {}
    for qid in data.query_ids:
        relevant = [paragraph_id for paragraph_id, score in data.qrels[qid].items() if score > 0]
        if every_paragraph and not all(paragraph_id in home for paragraph_id in relevant):
            continue
        for paragraph_id, score in data.qrels[qid].items():
            if score > 0:
                grades = qrels.setdefault(qid, {})
                grades[home[paragraph_id]] = max(score, grades.get(home[paragraph_id], 0))
    return qrels


def write_task(output: Path, spec: dict, documents: dict[str, str], queries: dict[str, str], qrels: dict) -> None:
    """Write the folder in the cmteb-mini format (UTF-8 JSONL, ``ensure_ascii=False``)."""
    (output / "qrels").mkdir(parents=True, exist_ok=True)
    (output / "task.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    _write_jsonl(output / "corpus.jsonl", [{"_id": d, "title": "", "text": t} for d, t in documents.items()])
    _write_jsonl(output / "queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()])
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
    (output / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options, checked: the output must be new and outside the repository."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="new task folder (outside the repository; must not exist)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="paragraph-level Retrieval task folder")
    parser.add_argument("--name", default="CMRC2018LongDoc", help="task name written to task.json")
    parser.add_argument("--min-paragraphs", type=int, default=5)
    parser.add_argument("--max-paragraphs", type=int, default=10)
    parser.add_argument(
        "--max-documents",
        type=int,
        default=None,
        help="keep only the first N documents (and the queries whose relevant paragraphs all sit in them)",
    )
    parser.add_argument("--max-queries", type=int, default=None, help="keep a seeded sample of this many queries")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if not 1 <= args.min_paragraphs <= args.max_paragraphs:
        parser.error("need 1 <= --min-paragraphs <= --max-paragraphs")
    if args.output.resolve().is_relative_to(REPO):
        parser.error(f"{args.output} is inside the repository; this data must not be committed, write it elsewhere")
    if args.output.exists():
        parser.error(f"{args.output} exists; remove it or pick another folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build the task; return the exit status."""
    args = parse_args(argv)
    source = load_task(args.source)
    if source.spec.type is not TaskType.RETRIEVAL:
        raise SystemExit(f"{args.source}: a Retrieval task is needed, got {source.spec.type.value}")
    data = source.data
    rng = random.Random(args.seed)
    sizes = group_sizes(len(data.corpus_ids), args.min_paragraphs, args.max_paragraphs, rng)
    documents, sections = build_documents(data.corpus_ids, data.corpus_texts, sizes)
    if args.max_documents is not None:
        documents = dict(list(documents.items())[: args.max_documents])
        sections = [section for section in sections if section.doc_id in documents]
    qrels = long_qrels(data, sections, every_paragraph=args.max_documents is not None)
    kept = sorted(qrels)
    if args.max_queries is not None and args.max_queries < len(kept):
        kept = sorted(rng.sample(kept, args.max_queries))
    queries = dict(zip(data.query_ids, data.query_texts, strict=True))
    spec = _spec(args, json.loads((args.source / "task.json").read_text(encoding="utf-8")), len(kept))
    write_task(args.output, spec, documents, {q: queries[q] for q in kept}, {q: qrels[q] for q in kept})
    _write_jsonl(args.output / "sections.jsonl", [vars(section) for section in sections])
    _report(args.output, documents, sections, {q: qrels[q] for q in kept}, data)
    return 0


def _spec(args: argparse.Namespace, source: dict, n_queries: int) -> dict:
    return {
        "name": args.name,
        "type": "Retrieval",
        "split": "test",
        "main_score": "ndcg_at_10",
        "s2p": True,
        "description": (
            f"Long documents of {args.min_paragraphs}-{args.max_paragraphs} consecutive paragraphs of "
            f"{source.get('name', args.source.name)} (titles joined to their paragraphs, paragraphs separated by a "
            f"line break), built by scripts/build_long_doc_task.py with seed {args.seed}; each query is relevant "
            "to the document holding its paragraph. sections.jsonl gives every paragraph's span."
        ),
        "source": source.get("source", []),
        "license": source.get("license", "see source"),
        "n": n_queries,
    }


def _report(output: Path, documents: dict[str, str], sections: list[Section], qrels: dict, data: RetrievalData) -> None:
    where = {section.paragraph_id: section for section in sections}
    starts = [where[p].start for q in qrels for p, score in data.qrels[q].items() if score > 0]
    lengths = sorted(len(text) for text in documents.values())
    late = sum(start >= 512 for start in starts) / max(len(starts), 1)
    print(
        f"wrote {output}: {len(documents)} documents (median {lengths[len(lengths) // 2]} characters), "
        f"{len(qrels)} queries; {late:.0%} of the relevant paragraphs start after character 512"
    )


if __name__ == "__main__":
    sys.exit(main())
