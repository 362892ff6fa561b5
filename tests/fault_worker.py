"""One fault-injection scenario, run as ``python fault_worker.py SCENARIO SEED POINTS WORKDIR`` by test_fault_injection.

How kills are placed: an audit hook (:func:`sys.addaudithook`) counts the file-system events the operation
raises (opening a file for writing, rename/replace, unlink, truncate, mkdir/rmdir, rmtree, and ctypes calls such
as the ``renameat2`` exchange) and SIGKILLs the process just before the N-th. A dry run counts the events; the
kill points are a seeded sample of them, so every run kills at the same places, and a failure names its point.
Each attempt runs in a child forked from this process after the imports, so a point costs milliseconds plus the
operation itself, not an interpreter start. Bytes written between two events are either in temporary files or
past a commit mark, so a kill inside a ``write`` leaves the same state as the kill at the next event.

After each kill the parent checks that nothing half-written loads, that the previous good artefact is intact
(or the new one is complete), then reruns the operation to completion in a fresh child and checks the result
against an uninterrupted reference run. It prints one JSON summary line; exit status 1 names the failing point.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

EVENTS = {
    "open",
    "os.rename",
    "os.remove",
    "os.truncate",
    "os.rmdir",
    "shutil.rmtree",
    "os.mkdir",
    "ctypes.call_function",
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
DIM = 8


class Killer:
    """Audit hook: counts file-system events and SIGKILLs the process just before event ``at`` (0: never)."""

    def __init__(self, at: int) -> None:
        self.at, self.count = at, 0

    def __call__(self, event: str, args: tuple) -> None:
        if event not in EVENTS:
            return
        if event == "open":
            mode, flags = args[1], args[2] or 0
            if not ((isinstance(mode, str) and set(mode) & set("wax+")) or flags & WRITE_FLAGS):
                return
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def in_child(operation: Callable[[], object], kill_at: int = 0) -> tuple[int, int]:
    """Run ``operation`` in a forked child; return its exit code (``-9`` when killed) and its event count."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        killer, code = Killer(kill_at), 0
        sys.addaudithook(killer)
        try:
            operation()
        except BaseException:  # reported to the parent through the exit code; the traceback goes to stderr
            traceback.print_exc()
            code = 1
        os.write(write, str(killer.count).encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        count = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), int(count or -1)


# --- index scenarios ---


class HashEncoder:
    name = "hash"

    def __init__(self) -> None:
        from piccolo_embed.types import Role, RoleSpec

        self.roles = {r: RoleSpec("", 64) for r in Role}

    def encode(self, texts, *, role=None):
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts]
        rows = [r / np.linalg.norm(r) for r in rows]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), DIM)


def corpus(path: Path, ids: range) -> Path:
    path.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"p{i}"}) + "\n" for i in ids), encoding="utf-8")
    return path


def index_state(directory: Path, refs: dict[str, Path]) -> str:
    """Which reference the committed index equals (``none`` when nothing is committed); raises if neither."""
    from piccolo_embed.index import IncompleteIndexError, IndexNotFoundError, IndexStore

    try:
        store = IndexStore.open(directory)
    except (IncompleteIndexError, IndexNotFoundError):
        return "none"
    store.verify(full=True)
    for name, ref in refs.items():
        expected = IndexStore.open(ref)
        if store.count == expected.count and list(store.iter_entries()) == list(expected.iter_entries()):
            assert np.array_equal(store.embeddings(), expected.embeddings()), f"{name}: vectors differ"
            assert (store.load_ann() is None) == (expected.load_ann() is None)
            return name
    raise AssertionError(f"{directory}: a committed index that is neither of {sorted(refs)}")


def index_scenario(kind: str, work: Path) -> dict:
    from piccolo_embed.index import build_index

    a, b = corpus(work / "a.jsonl", range(20)), corpus(work / "b.jsonl", range(20, 50))
    build = {"chunk_size": 10, "index_type": "hnsw"}
    if kind == "build":
        old = None
        in_child(lambda: build_index(HashEncoder(), b, work / "new", **build))
        op = lambda target: build_index(HashEncoder(), b, target, **build)  # noqa: E731
        refs = {"new": work / "new"}
    else:
        in_child(lambda: build_index(HashEncoder(), a, work / "old", **build))
        old = work / "old"
        if kind == "append":
            shutil.copytree(old, work / "new")
            in_child(lambda: build_index(HashEncoder(), b, work / "new", mode="append", **build))
        else:
            in_child(lambda: build_index(HashEncoder(), b, work / "new", **build))
        op = lambda target: build_index(HashEncoder(), b, target, mode=kind, **build)  # noqa: E731
        refs = {"old": old, "new": work / "new"}

    def fresh(point: int) -> Path:
        target = work / f"p{point}" / "idx"
        if old is None:
            target.parent.mkdir(parents=True)
        else:
            shutil.copytree(old, target)
        return target

    def after_kill(target: Path) -> str:
        state = index_state(target, refs)
        assert state != "none" or old is None, "the previous index is gone"
        return state

    def final(target: Path) -> None:
        assert index_state(target, refs) == "new"
        leftovers = sorted(p.name for p in target.parent.iterdir() if p.name != "idx")
        assert not leftovers or kind != "overwrite", f"left beside the index: {leftovers}"

    return {
        "fresh": fresh,
        "op": op,
        "after_kill": after_kill,
        # A committed build or append is not run twice (its ids would be refused as duplicates); an overwrite is
        # rerun whatever the state, which also removes the staging directory a kill after the swap leaves.
        "rerun": lambda target, state: (state == "new" and kind != "overwrite") or op(target),
        "final": final,
    }


# --- model scenarios ---


def tiny_model(work: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_tiny_bert

    return build_tiny_bert(work / "tiny", seed=0)


def weights(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


def same(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> bool:
    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)


def model_state(directory: Path, refs: dict[str, dict]) -> str:
    """Which reference the model in ``directory`` equals after loading it; ``none`` when it does not load."""
    from piccolo_embed.inference.embedder import Embedder

    try:
        Embedder.from_pretrained(directory, device="cpu")
    except Exception:  # a half-moved run directory must fail to load, whatever the error
        return "none"
    have = weights(directory)
    for name, ref in refs.items():
        if same(have, ref):
            return name
    raise AssertionError(f"{directory}: a model that loads but is neither of {sorted(refs)}")


def save_scenario(work: Path) -> dict:
    import torch

    from piccolo_embed.atomic import replace_dir, staging_dir
    from piccolo_embed.inference.embedder import Embedder

    tiny = tiny_model(work)

    def save(target: Path, shift: float) -> None:  # the save path run.py uses for best/ and other standalone dirs
        embedder = Embedder.from_pretrained(tiny, device="cpu")
        with torch.no_grad():
            for parameter in embedder.model.parameters():
                parameter.add_(shift)
        with staging_dir(target) as tmp:
            embedder.save_pretrained(tmp)
            replace_dir(tmp, target)

    in_child(lambda: save(work / "old", 0.0))
    in_child(lambda: save(work / "new", 0.5))
    refs = {"old": weights(work / "old"), "new": weights(work / "new")}

    def fresh(point: int) -> Path:
        return Path(shutil.copytree(work / "old", work / f"p{point}" / "model"))

    def after_kill(target: Path) -> str:
        state = model_state(target, refs)
        assert state != "none", "the previous model does not load"
        return state

    def final(target: Path) -> None:
        assert model_state(target, refs) == "new"
        # A kill inside the save leaves its hidden staging directory, which the rerun's save removes.
        assert [p.name for p in target.parent.iterdir()] == ["model"]

    return {
        "fresh": fresh,
        "op": lambda t: save(t, 0.5),
        "after_kill": after_kill,
        "rerun": lambda t, s: save(t, 0.5),
        "final": final,
    }


def train_scenario(work: Path) -> dict:
    from piccolo_embed.training.checkpoint import intact_checkpoints, read_record
    from piccolo_embed.training.config import RunConfig
    from piccolo_embed.training.run import train_from_config

    tiny = tiny_model(work)
    pairs = work / "pairs.jsonl"
    chars = "今天天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程"
    rows = [{"query": chars[i % 20 : i % 20 + 4], "pos": [chars[(i * 3) % 20 :][:8]]} for i in range(16)]
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    def config(output: Path) -> RunConfig:
        return RunConfig.from_mapping(
            {
                "model": {"name": str(tiny), "query_max_length": 16, "passage_max_length": 16},
                "data": {"datasets": [{"file": str(pairs), "kind": "s2p"}], "cache_dir": str(work / "arrow")},
                "loss": {"contrastive": "gte", "temperature": 0.05},
                "training": {
                    "output_dir": str(output),
                    "batch_size": 4,
                    "learning_rate": 1e-3,
                    "max_steps": 2,
                    "save_every": 1,
                    "log_every": 1,
                },
            }
        )

    in_child(lambda: train_from_config(config(work / "ref")))
    refs = {"new": weights(work / "ref")}

    def fresh(point: int) -> Path:
        return work / f"p{point}" / "run"

    def after_kill(target: Path) -> str:
        for path, _record in intact_checkpoints(target):  # what --resume may pick must load whole
            read_record(path)
            weights(path)
        return model_state(target, refs) if target.is_dir() else "none"

    def rerun(target: Path, state: str) -> None:
        if state != "new":
            started = any(intact_checkpoints(target)) if target.is_dir() else False
            train_from_config(config(target), resume=started, overwrite=not started)

    def final(target: Path) -> None:
        assert model_state(target, refs) == "new", "the rerun did not reproduce the uninterrupted run's weights"

    return {
        "fresh": fresh,
        "op": lambda t: train_from_config(config(t)),
        "after_kill": after_kill,
        "rerun": rerun,
        "final": final,
    }


def run(scenario: str, seed: int, points: int, work: Path) -> dict:
    parts = (
        save_scenario(work)
        if scenario == "save"
        else train_scenario(work)
        if scenario == "train"
        else index_scenario(scenario, work)
    )
    dry = parts["fresh"](0)
    code, total = in_child(lambda: parts["op"](dry))
    assert code == 0, f"the dry run failed ({code})"
    chosen = sorted(random.Random(seed).sample(range(1, total + 1), min(points, total)))
    states: Counter[str] = Counter()
    for point, kill_at in enumerate(chosen, start=1):
        target = parts["fresh"](point)
        code, _ = in_child(lambda target=target: parts["op"](target), kill_at)
        try:
            assert code == -signal.SIGKILL, f"the operation was not killed (exit {code})"
            state = parts["after_kill"](target)
            states[state] += 1
            rerun_code, _ = in_child(lambda target=target, state=state: parts["rerun"](target, state))
            assert rerun_code == 0, f"the rerun failed (exit {rerun_code})"
            parts["final"](target)
        except Exception as err:
            raise AssertionError(f"{scenario}: kill before event {kill_at} of {total} (point {point}): {err}") from err
        shutil.rmtree(target.parent, ignore_errors=True)
    return {"scenario": scenario, "events": total, "kill_points": chosen, "states": dict(states)}


if __name__ == "__main__":
    name, seed, count, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    import torch

    torch.set_num_threads(1)
    print(json.dumps(run(name, seed, count, workdir)))
