"""End to end on the tiny model: output layout, JSONL log, exact resume after a crash, output-dir guards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from piccolo_embed import Embedder
from piccolo_embed.data.collator import RoleAwareCollator
from piccolo_embed.training import run as run_module
from piccolo_embed.training.checkpoint import checkpoints
from piccolo_embed.training.run import train_from_config
from piccolo_embed.types import Role


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_trains_and_writes_a_loadable_model_with_roles_and_a_log(make_config) -> None:
    config = make_config(max_steps=4, save_every=2)
    output = train_from_config(config)
    model = Embedder.from_pretrained(output)
    assert model.roles[Role.QUERY].prefix == "查询: " and model.roles[Role.QUERY].max_length == 16
    assert model.roles[Role.PASSAGE].max_length == 24
    assert model.encode(["今天天气很好"]).shape == (1, 32)
    lines = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert {"step", "epoch", "dataset", "loss", "lr", "pairs_per_s", "tokens_per_s"} <= lines[0].keys()
    assert {line["dataset"] for line in lines} <= {"pairs", "sts"}
    assert json.loads((output / "train_config.json").read_text())["loss"]["contrastive"] == "gte"
    assert [p.name for p in checkpoints(output)] == ["step-00000002"]  # the final step is the model itself


class SimulatedCrashError(RuntimeError):
    pass


def test_resume_after_a_crash_reaches_the_same_weights(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train_from_config(make_config("uninterrupted", save_every=3, max_steps=11))
    epochs = [json.loads(x)["epoch"] for x in (reference / "log.jsonl").read_text().splitlines()]
    assert epochs[5] < 1 < epochs[-1]  # the resumed part crosses an epoch boundary (9 steps per epoch)

    calls = {"n": 0}

    class CrashingCollator(RoleAwareCollator):
        def __call__(self, batch):
            calls["n"] += 1
            if calls["n"] == 8:  # while fetching step 8: the last checkpoint is step 6
                raise SimulatedCrashError
            return super().__call__(batch)

    config = make_config("interrupted", save_every=3, max_steps=11)
    monkeypatch.setattr(run_module, "RoleAwareCollator", CrashingCollator)
    with pytest.raises(SimulatedCrashError):
        train_from_config(config)
    monkeypatch.undo()
    assert checkpoints(Path(config.training.output_dir))[-1].name == "step-00000006"
    with pytest.raises(FileExistsError, match="--resume"):
        train_from_config(config)
    resumed = train_from_config(config, resume=True)

    want, got = _weights(reference), _weights(resumed)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)
    log_want = [json.loads(x)["loss"] for x in (reference / "log.jsonl").read_text().splitlines()]
    log_got = [json.loads(x)["loss"] for x in (resumed / "log.jsonl").read_text().splitlines()]
    assert np.allclose(log_got[-3:], log_want[-3:], atol=1e-5)


def test_resume_without_a_checkpoint_fails(make_config) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_from_config(make_config(max_steps=1), resume=True)


def test_gradcache_and_matryoshka_train(make_config, tmp_path: Path) -> None:
    config = make_config(max_steps=2)
    raw = config.to_dict()
    raw["loss"].update(mini_batch_size=2, matryoshka_dims=[32, 16])
    raw["model"]["gradient_checkpointing"] = True
    output = train_from_config(type(config).from_mapping(raw))
    assert (output / "modules.json").is_file()


def test_a_run_on_a_trimmed_vocabulary_saves_the_base_vocabulary(
    make_config, tiny_bert_dir: Path, pairs_file: Path, scored_file: Path
) -> None:
    from transformers import AutoTokenizer

    output = train_from_config(make_config(max_steps=3, model_overrides={"trim_vocab": True}))
    assert not (output / run_module.TRIMMED_BASE).exists()  # a training intermediate, removed at the end
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    texts = ["查询: ", "结果: "]
    for path in (pairs_file, scored_file):
        for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
            texts += [v for v in row.values() if isinstance(v, str)] + [
                t for v in row.values() if isinstance(v, list) for t in v
            ]
    used = {i for ids in tokenizer(texts)["input_ids"] for i in ids} | set(tokenizer.all_special_ids)
    base, trained = _weights(tiny_bert_dir), _weights(output)
    name = "embeddings.word_embeddings.weight"
    assert trained[name].shape == base[name].shape
    changed = {i for i in range(base[name].shape[0]) if not torch.equal(trained[name][i], base[name][i])}
    assert changed and changed <= used  # the trained rows went back in at their base ids
    unused = sorted(set(range(base[name].shape[0])) - used)
    torch.testing.assert_close(trained[name][unused], base[name][unused], rtol=0, atol=0)
    text = "手机电脑以外的字：鲸鱼飞翔"  # characters no training text has
    assert AutoTokenizer.from_pretrained(str(output))(text)["input_ids"] == tokenizer(text)["input_ids"]


@pytest.mark.parametrize(
    ("precision", "cuda", "amx", "expected"),
    [
        ("fp32", False, True, "no"),
        ("bf16", False, True, "bf16"),
        ("auto", False, True, "bf16"),
        ("auto", False, False, "no"),
        ("fp32", True, False, "no"),
        ("fp16", True, False, "fp16"),
    ],
)
def test_mixed_precision_per_machine(precision: str, cuda: bool, amx: bool, expected: str) -> None:
    from piccolo_embed.training.loop import mixed_precision
    from piccolo_embed.types import Precision

    assert mixed_precision(Precision.parse(precision), cuda=cuda, amx=amx) == expected


@pytest.mark.parametrize(("precision", "message"), [("bf16", "needs AMX"), ("fp16", "fp16 needs CUDA")])
def test_half_precision_is_refused_where_it_would_be_slow(precision: str, message: str) -> None:
    from piccolo_embed.training.loop import mixed_precision
    from piccolo_embed.types import Precision

    with pytest.raises(ValueError, match=message):
        mixed_precision(Precision.parse(precision), cuda=False, amx=False)


def test_labelled_classification_data_trains_end_to_end(make_config, tmp_path: Path) -> None:
    """A labelled set runs through the label contrast next to the other kinds, and the weights are applied."""
    words = "今天天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程"
    rows = [
        {"query": words[i : i + 5], "pos": [words[i + 1 : i + 6]], "neg": [words[i + 7 : i + 12]] * 2, "label": i % 2}
        for i in range(12)
    ]
    cls = tmp_path / "cls.jsonl"
    cls.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    base = make_config(max_steps=6).to_dict()
    base["data"]["datasets"].append({"file": str(cls), "records": "labelled", "kind": "s2s", "num_negatives": 2})
    base["loss"]["label_weight"] = 0.5
    from piccolo_embed.training.config import RunConfig

    output = train_from_config(RunConfig.from_mapping(base))
    lines = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert "cls" in {line["dataset"] for line in lines}
    assert all(np.isfinite(line["loss"]) for line in lines)


def _sts_task(folder: Path) -> Path:
    folder.mkdir(parents=True)
    spec = {"name": folder.name, "type": "STS", "split": "test", "main_score": "cosine_spearman", "s2p": False}
    (folder / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    words = "今天天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程"
    rows = [
        {"sentence1": words[i : i + 6], "sentence2": words[i + 1 : i + 7 + i % 3], "score": float(i % 5)}
        for i in range(20)
    ]
    (folder / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return folder


def test_dev_evaluation_logs_scores_and_keeps_the_best_model(make_config, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from piccolo_embed.evaluation.runner import evaluate

    task = _sts_task(tmp_path / "tasks" / "DevSTS")
    raw = make_config(max_steps=4, model_overrides={"trim_vocab": True}).to_dict()
    raw["training"]["eval"] = {"tasks": [str(task.parent)], "every": 2, "max_per_task": None}
    from piccolo_embed.training.config import RunConfig

    output = train_from_config(RunConfig.from_mapping(raw))
    lines = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    dev = [line for line in lines if "dev/average" in line]
    assert [line["step"] for line in dev] == [2, 4]
    assert all("dev/DevSTS" in line and "dev/STS" in line for line in dev)
    best = json.loads((output / "best.json").read_text())
    assert best["average"] == pytest.approx(max(line["dev/average"] for line in dev), abs=1e-6)  # the log rounds
    assert best["step"] in (2, 4)
    rescored = evaluate(Embedder.from_pretrained(output / "best"), [task])  # the saved best gives its score
    assert rescored.average == pytest.approx(best["average"], abs=1e-6)
    name = "embeddings.word_embeddings.weight"
    assert _weights(output / "best")[name].shape == _weights(tiny_bert_dir)[name].shape  # the whole vocabulary


def test_tensorboard_gets_the_training_curves(make_config) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = train_from_config(make_config(max_steps=3, tensorboard=True))
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/pairs_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
