"""Data safety of training runs: no silent replacement, one run per log, atomic model saves."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from piccolo_embed.inference.embedder import Embedder
from piccolo_embed.training.run import train_from_config


def _log_steps(output: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output / "log.jsonl").read_text().splitlines() if "loss" in line]


def test_a_finished_model_is_replaced_only_with_overwrite_and_the_log_restarts(make_config) -> None:
    output = train_from_config(make_config(max_steps=3))
    before = (output / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_from_config(make_config(max_steps=2))
    assert (output / "model.safetensors").read_bytes() == before
    assert _log_steps(output) == [1, 2, 3]
    train_from_config(make_config(max_steps=2, learning_rate=5e-3), overwrite=True)
    assert _log_steps(output) == [1, 2]  # the old run's lines are gone, not appended to
    assert (output / "model.safetensors").read_bytes() != before


class SimulatedKillError(RuntimeError):
    pass


def test_a_save_killed_half_way_leaves_the_previous_model_intact(
    make_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    output = train_from_config(make_config(max_steps=2))
    before = load_file(str(output / "model.safetensors"))
    real_save = Embedder.save_pretrained

    def half_save(self: Embedder, directory: Path) -> Path:
        real_save(self, directory)  # the weights are written, then the process dies
        raise SimulatedKillError

    monkeypatch.setattr(Embedder, "save_pretrained", half_save)
    with pytest.raises(SimulatedKillError):
        train_from_config(make_config(max_steps=2, learning_rate=5e-3), overwrite=True)
    after = load_file(str(output / "model.safetensors"))
    assert all((after[name] == before[name]).all() for name in before)
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert Embedder.from_pretrained(output).encode(["今天"]).shape == (1, 32)


def test_a_trimmed_base_from_another_base_model_or_other_texts_is_rebuilt(
    make_config, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from piccolo_embed.modeling.trim import read_trim_map
    from piccolo_embed.training import run as run_module

    model = make_config(model_overrides={"trim_vocab": True}).model
    output = tmp_path / "run"
    output.mkdir()
    trimmed = run_module._trimmed_base(tiny_bert_dir, [], model, output)
    other = tmp_path / "other-base"
    shutil.copytree(tiny_bert_dir, other)
    name = "embeddings.word_embeddings.weight"
    weights = load_file(str(other / "model.safetensors"))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})

    run_module._trimmed_base(other, [], model, output)
    kept = read_trim_map(trimmed)
    torch.testing.assert_close(load_file(str(trimmed / "model.safetensors"))[name], weights[name][kept])

    other_texts = dataclasses.replace(model, query_prefix="医院看病: ")
    run_module._trimmed_base(other, [], other_texts, output)
    assert len(read_trim_map(trimmed)) > len(kept)


def test_malformed_yaml_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    from piccolo_embed.training.config import ConfigError, RunConfig

    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: x\ntraining: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4:1: invalid YAML") as info:
        RunConfig.from_yaml(path)
    assert "\n" not in str(info.value)
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  name: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"--set a\.b:1:\d+: invalid YAML"):
        RunConfig.from_yaml(good, ["a.b=[1"])


def test_training_data_that_is_not_utf8_names_file_and_line(pairs_file: Path) -> None:
    from piccolo_embed.data.records import RecordError, read_records

    lines = pairs_file.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"', b'"\xff', 1)
    pairs_file.write_bytes(b"".join(lines))
    with pytest.raises(RecordError, match=r"pairs\.jsonl:5: .*not valid UTF-8"):
        list(read_records(pairs_file, "triplet"))


def test_the_model_config_and_checkpoints_are_synced_before_their_rename(make_config, sync_log) -> None:
    output = train_from_config(make_config(max_steps=3, save_every=2)).resolve()
    for name in ("model.safetensors", "config.json", "piccolo_embed.json", "train_config.json"):
        sync_log.assert_published(output / name)
    checkpoint = output / "checkpoints" / "step-00000002"
    sync_log.assert_published(checkpoint / "checkpoint.json")
    recorded = next(i for i, (kind, what) in enumerate(sync_log) if what.endswith(f"-> {checkpoint}/checkpoint.json"))
    for path in checkpoint.iterdir():
        assert path.name == "checkpoint.json" or ("fsync", str(path)) in sync_log[:recorded], path.name
