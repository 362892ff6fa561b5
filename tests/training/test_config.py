"""Config parsing: shipped configs load; bad keys and values fail early with the dotted path and the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from piccolo_embed.data.records import RecordKind
from piccolo_embed.losses import ContrastiveObjective
from piccolo_embed.training.config import ConfigError, RunConfig, apply_override
from piccolo_embed.types import Precision, TaskKind

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MINIMAL = {"model": {"name": "m"}, "data": {"datasets": [{"file": "a.jsonl"}]}, "training": {"output_dir": "o"}}


@pytest.mark.parametrize(
    "name", ["cpu_quick.yaml", "stage1.yaml", "stage2.yaml", "recipe_cpu/stage1.yaml", "recipe_cpu/stage2.yaml"]
)
def test_shipped_configs_parse(name: str) -> None:
    config = RunConfig.from_yaml(CONFIGS / name)
    assert config.data.datasets and config.training.output_dir.startswith("runs/")


def test_stage_presets_mirror_the_recipe() -> None:
    stage1 = RunConfig.from_yaml(CONFIGS / "stage1.yaml")
    assert stage1.loss.contrastive is ContrastiveObjective.INFONCE and stage1.data.num_negatives == 0
    assert stage1.model.query_max_length == stage1.model.passage_max_length == 128
    assert stage1.loss.temperature == 0.01 and stage1.loss.gather_across_devices
    stage2 = RunConfig.from_yaml(CONFIGS / "stage2.yaml")
    assert stage2.loss.contrastive is ContrastiveObjective.GTE and stage2.data.num_negatives >= 1
    assert (stage2.model.query_max_length, stage2.model.passage_max_length) == (64, 512)
    assert {d.records for d in stage2.data.datasets} == {RecordKind.TRIPLET, RecordKind.SCORED}
    assert stage2.training.precision is Precision.AUTO


def test_defaults_and_types() -> None:
    config = RunConfig.from_mapping(MINIMAL)
    entry = config.data.datasets[0]
    assert entry.kind is TaskKind.S2P and entry.records is RecordKind.TRIPLET and entry.label == "a"
    assert config.loss.contrastive is ContrastiveObjective.INFONCE
    assert config.to_dict()["training"]["precision"] == "fp32"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"training": {"output_dir": "o", "lr": 1}}, r"training: unknown key\(s\) 'lr'; valid keys: output_dir,"),
        ({"losss": {}}, r"config: unknown key\(s\) 'losss'; valid keys: model, data, training, loss"),
        ({"loss": {"contrastive": "triplet"}}, r"loss.contrastive: unknown ContrastiveObjective 'triplet'; choose"),
        ({"training": {"output_dir": "o", "batch_size": "big"}}, r"training.batch_size: expected int, got 'big'"),
        ({"training": {"output_dir": "o", "batch_size": True}}, r"training.batch_size: expected int"),
        ({"model": {"name": "m", "trim_vocab": "yes"}}, r"model.trim_vocab: expected true or false"),
        ({"model": {}}, r"model.name: required key is missing"),
        ({"loss": {"temperature": 0}}, r"loss.temperature: must be > 0"),
        ({"data": {"datasets": [{"file": "a", "kind": "p2p"}]}}, r"data.datasets\[0\].kind: unknown TaskKind"),
        ({"data": {"datasets": [{"file": "x/a.jsonl"}, {"file": "y/a.jsonl"}]}}, r"duplicate names \['a'\]"),
        ({"data": {"datasets": []}}, r"data.datasets: needs at least one dataset"),
        ({"loss": {"matryoshka_dims": [32, "x"]}}, r"loss.matryoshka_dims\[1\]: expected int"),
        ({"loss": {"label_weight": -1}}, r"loss.label_weight: must be >= 0"),
        ({"loss": {"mini_batch_size": 0}}, r"loss.mini_batch_size: must be >= 1"),
        ({"training": {"output_dir": "o", "max_steps": 0}}, r"training.max_steps: must be >= 1"),
        ({"training": {"output_dir": "o", "warmup_steps": -1}}, r"training.warmup_steps: must be >= 0"),
        ({"training": {"output_dir": "o", "weight_decay": -0.01}}, r"training.weight_decay: must be >= 0"),
        ({"data": {"datasets": [{"file": "a", "cap": 0}]}}, r"data.datasets\[0\].cap: must be >= 1"),
        ({"loss": {"label_temperature": 0}}, r"loss.label_temperature: must be > 0"),
        ({"data": {"datasets": [{"file": "a", "num_negatives": -1}]}}, r"data.datasets\[0\].num_negatives: must be"),
        ({"data": {"datasets": [{"file": "a", "records": "cls"}]}}, r"unknown RecordKind 'cls'; choose one of: trip"),
    ],
)
def test_bad_keys_and_values_fail_with_their_path(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping({**MINIMAL, **patch})


def test_set_overrides_apply_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    config = RunConfig.from_yaml(
        path, ["training.max_steps=7", "loss.contrastive=gte", "data.datasets.0.weight=2.5", "loss.matryoshka_dims=[8]"]
    )
    assert config.training.max_steps == 7 and config.loss.contrastive is ContrastiveObjective.GTE
    assert config.data.datasets[0].weight == 2.5 and config.loss.matryoshka_dims == (8,)


@pytest.mark.parametrize(
    ("item", "message"),
    [("nokey", "expects KEY=VALUE"), ("data.datasets.3.weight=1", "list index below 1"), ("model.name.x=1", "value")],
)
def test_bad_overrides_fail(item: str, message: str) -> None:
    raw = yaml.safe_load(yaml.safe_dump(MINIMAL))
    with pytest.raises(ConfigError, match=message):
        apply_override(raw, item)


def _train_args(*argv: str):
    from piccolo_embed.cli import build_parser

    return build_parser(("piccolo_embed.cli.train",)).parse_args(["train", *argv])


def test_cli_rejects_a_bad_config_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "model": {"name": "/does/not/exist"}}))
    args = _train_args("--config", str(path), "--set", "training.warmup=3")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'warmup'; valid keys: output_dir, batch_size"):
        args.func(args)


def test_cli_trains_with_overrides(make_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_config().to_dict(), allow_unicode=True))
    args = _train_args("--config", str(path), "--set", "training.max_steps=2", "--set", "loss.contrastive=infonce")
    assert args.func(args) == 0
    output = Path(make_config().training.output_dir)
    assert "trained model written to" in capsys.readouterr().out
    assert len((output / "log.jsonl").read_text().splitlines()) == 2
