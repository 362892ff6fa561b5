"""Model merging against a by-hand average of state dicts, and every refusal."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from piccolo_embed import Embedder, Role, RoleSpec
from piccolo_embed.cli import main
from piccolo_embed.modeling.merge import MERGE_FILE, MergeError, merge_models, normalise_weights

TEXTS = ["今天天气很好", "北京的美食推荐", "如何学习编程", "机器人"]
ROLES = {Role.QUERY: RoleSpec("问：", 16), Role.PASSAGE: RoleSpec("答：", 64), Role.NONE: RoleSpec("", 64)}


def rewrite_weights(model_dir: Path, change) -> None:
    """Replace every safetensors file's tensors with ``change(tensors)``."""
    for path in model_dir.rglob("*.safetensors"):
        save_file(change(load_file(path)), path, metadata={"format": "pt"})


def randomised(tensors: dict, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: t + 0.1 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t
        for k, t in tensors.items()
    }


@pytest.fixture
def base_dir(tiny_bert_dir: Path) -> Path:
    """The base model, Hugging Face layout, with a pooler (as the starter has), so it has every tensor a
    sentence-transformers save of it has."""
    torch.manual_seed(0)
    AutoModel.from_pretrained(str(tiny_bert_dir)).save_pretrained(tiny_bert_dir)
    return tiny_bert_dir


@pytest.fixture
def tuned_dir(base_dir: Path, tmp_path: Path) -> Path:
    """A "fine-tuned" model: other random weights, sentence-transformers layout with its own role settings."""
    out = Embedder.from_pretrained(base_dir, roles=ROLES, device="cpu").save_pretrained(tmp_path / "tuned")
    rewrite_weights(out, lambda tensors: randomised(tensors, seed=1))
    return out


def reference_state(models: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The obvious average: load each model whole with transformers, sum state dicts in float32."""
    states = [AutoModel.from_pretrained(str(m)).state_dict() for m in models]
    total = sum(weights)
    return {key: sum(w / total * s[key].float() for w, s in zip(weights, states, strict=True)) for key in states[0]}


def reference_embeddings(first: Path, state: dict[str, torch.Tensor]) -> np.ndarray:
    model = SentenceTransformer(str(first), device="cpu")
    model[0].auto_model.load_state_dict(state)
    return model.encode(TEXTS, prompt_name="query")


def test_half_half_equals_reference_and_loads_everywhere(tuned_dir, base_dir, tmp_path):
    report = merge_models([tuned_dir, base_dir], tmp_path / "merged", weights=[0.5, 0.5])
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    expected = reference_state([tuned_dir, base_dir], [0.5, 0.5])
    assert merged.keys() == expected.keys()
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6)
    assert report.weights == (0.5, 0.5) and report.tensors == len(merged)

    st_vectors = SentenceTransformer(str(tmp_path / "merged"), device="cpu").encode(TEXTS, prompt_name="query")
    np.testing.assert_allclose(st_vectors, reference_embeddings(tuned_dir, expected), atol=1e-5)
    embedder = Embedder.from_pretrained(tmp_path / "merged", device="cpu")
    assert embedder.roles == ROLES
    np.testing.assert_allclose(embedder.encode(TEXTS, Role.QUERY), st_vectors, atol=1e-5)


def test_weights_are_normalised(tuned_dir, base_dir, tmp_path):
    merge_models([tuned_dir, base_dir], tmp_path / "merged", weights=[3, 1])
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    expected = reference_state([tuned_dir, base_dir], [0.75, 0.25])
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=1e-6)


def test_weights_one_zero_reproduce_the_first_model_exactly(tuned_dir, base_dir, tmp_path):
    merge_models([tuned_dir, base_dir], tmp_path / "merged", weights=[1, 0])
    ours, theirs = load_file(tuned_dir / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    before = Embedder.from_pretrained(tuned_dir, device="cpu").encode(TEXTS, Role.PASSAGE)
    after = Embedder.from_pretrained(tmp_path / "merged", device="cpu").encode(TEXTS, Role.PASSAGE)
    np.testing.assert_array_equal(after, before)


def test_output_is_a_complete_copy_of_the_first_model(tuned_dir, base_dir, tmp_path):
    (tuned_dir / "onnx").mkdir()
    (tuned_dir / "onnx" / "model.onnx").write_bytes(b"stale export of other weights")
    (tuned_dir / "pytorch_model.bin").write_bytes(b"stale weights")
    out = tmp_path / "merged"
    merge_models([tuned_dir, base_dir], out, weights=[0.7, 0.3])
    copied = {p.relative_to(tuned_dir) for p in tuned_dir.rglob("*") if p.is_file()}
    copied -= {Path("model.safetensors"), Path("onnx/model.onnx"), Path("pytorch_model.bin")}
    assert {Path("piccolo_embed.json"), Path("modules.json"), Path("tokenizer.json")} <= copied
    for name in copied:
        assert (out / name).read_bytes() == (tuned_dir / name).read_bytes(), name
    assert not (out / "onnx").exists() and not (out / "pytorch_model.bin").exists()
    record = json.loads((out / MERGE_FILE).read_text(encoding="utf-8"))
    assert [m["weight"] for m in record["models"]] == pytest.approx([0.7, 0.3])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_first_model_dtype_is_kept(base_dir, tuned_dir, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(base_dir, half)
    rewrite_weights(half, lambda tensors: {k: t.half() for k, t in tensors.items()})
    merge_models([half, tuned_dir], tmp_path / "merged", weights=[0.5, 0.5])
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    a, b = load_file(half / "model.safetensors"), load_file(tuned_dir / "model.safetensors")
    for key, tensor in merged.items():
        assert tensor.dtype == torch.float16
        torch.testing.assert_close(tensor, (0.5 * a[key].double() + 0.5 * b[key].double()).half(), rtol=0, atol=0)


def test_sharded_checkpoints_merge_shard_by_shard(base_dir, tmp_path):
    shards = []
    for seed in (1, 2):
        model = AutoModel.from_pretrained(str(base_dir))
        model.load_state_dict(randomised(model.state_dict(), seed))
        target = tmp_path / f"sharded{seed}"
        shutil.copytree(base_dir, target, ignore=shutil.ignore_patterns("*.safetensors"))
        model.save_pretrained(target, max_shard_size="40KB")
        shards.append(target)
    assert len(list(shards[0].glob("*.safetensors"))) > 1
    report = merge_models(shards, tmp_path / "merged", weights=[0.4, 0.6])
    assert len(report.weight_files) > 1
    merged = AutoModel.from_pretrained(str(tmp_path / "merged")).state_dict()
    expected = reference_state(shards, [0.4, 0.6])
    for key, tensor in expected.items():
        torch.testing.assert_close(merged[key], tensor, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "got 1 weights for 2 models"),
        ([1.0, -0.5], "weight 2 is -0.5"),
        ([float("nan"), 1.0], "weight 1 is nan"),
        ([float("inf"), 1.0], "weight 1 is inf"),
        ([0.0, 0.0], "all weights are zero"),
    ],
)
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(MergeError, match=message):
        normalise_weights(weights, 2)


def test_one_model_is_refused(base_dir, tmp_path):
    with pytest.raises(MergeError, match="at least two models"):
        merge_models([base_dir], tmp_path / "merged")


def edit_json(path: Path, **changes) -> None:
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload.update(changes)
    path.write_text(json.dumps(payload), encoding="utf-8")


def swap_two_tokens(model_dir: Path) -> None:
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["今"], vocab["天"] = vocab["天"], vocab["今"]
    (model_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def drop_tensor(model_dir: Path) -> None:
    rewrite_weights(model_dir, lambda t: {k: v for k, v in t.items() if k != "encoder.layer.1.output.dense.bias"})


def reshape_tensor(model_dir: Path) -> None:
    key = "embeddings.position_embeddings.weight"
    rewrite_weights(model_dir, lambda t: {**t, key: t[key][:64]})


def add_int_buffer(model_dir: Path) -> None:
    rewrite_weights(model_dir, lambda t: {**t, "embeddings.position_ids": torch.arange(128).flip(0)[None]})


def pool_with_cls(model_dir: Path) -> None:
    edit_json(model_dir / "1_Pooling" / "config.json", pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)


REFUSALS = [
    (lambda d: edit_json(d / "config.json", num_hidden_layers=3), "config.json num_hidden_layers is 3"),
    (lambda d: edit_json(d / "config.json", hidden_size=64), "config.json hidden_size is 64"),
    (swap_two_tokens, "vocabulary token id"),
    (drop_tensor, "model.safetensors lacks tensor 'encoder.layer.1.output.dense.bias'"),
    (reshape_tensor, r"tensor 'embeddings.position_embeddings.weight' shape is \[64, 32\]"),
    (add_int_buffer, "model.safetensors has tensor 'embeddings.position_ids'"),
    (pool_with_cls, "1_Pooling/config.json pooling_mode_cls_token is True"),
    (lambda d: (d / "model.safetensors").rename(d / "model-renamed.safetensors"), "list of weight files"),
]


@pytest.mark.parametrize(("break_model", "message"), REFUSALS)
def test_mismatched_models_are_refused_naming_model_and_key(tuned_dir, tmp_path, break_model, message):
    other = tmp_path / "other"
    shutil.copytree(tuned_dir, other)
    break_model(other)
    with pytest.raises(MergeError, match=message) as caught:
        merge_models([tuned_dir, other], tmp_path / "out" / "merged", weights=[0.5, 0.5])
    assert f"model 2 ({other})" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_unequal_integer_tensors_are_refused_and_leave_nothing(tuned_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tuned_dir, other)
    rewrite_weights(tuned_dir, lambda t: {**t, "embeddings.position_ids": torch.arange(128)[None]})
    add_int_buffer(other)
    with pytest.raises(MergeError, match=r"tensor 'embeddings.position_ids' .*not averaged.* differs"):
        merge_models([tuned_dir, other], tmp_path / "out" / "merged")
    assert list((tmp_path / "out").iterdir()) == []


def test_equal_integer_tensors_are_copied(tuned_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tuned_dir, other)
    for model in (tuned_dir, other):
        add_int_buffer(model)
    merge_models([tuned_dir, other], tmp_path / "merged")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert torch.equal(merged["embeddings.position_ids"], torch.arange(128).flip(0)[None])


def test_pytorch_bin_only_model_is_refused(base_dir, tmp_path):
    binary = tmp_path / "binary"
    shutil.copytree(base_dir, binary, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(AutoModel.from_pretrained(str(base_dir)).state_dict(), binary / "pytorch_model.bin")
    with pytest.raises(MergeError, match=r"no \.safetensors weights .*re-save it with safetensors"):
        merge_models([binary, base_dir], tmp_path / "merged")


def test_existing_output_needs_overwrite(tuned_dir, base_dir, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(MergeError, match="not empty; pass --overwrite"):
        merge_models([tuned_dir, base_dir], out)
    merge_models([tuned_dir, base_dir], out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    empty = tmp_path / "empty"
    empty.mkdir()
    merge_models([tuned_dir, base_dir], empty)
    assert (empty / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_may_not_touch_an_input(tuned_dir, base_dir, where):
    output = {"same": tuned_dir, "inside": tuned_dir / "merged", "parent": tuned_dir.parent}[where]
    with pytest.raises(MergeError, match="must not be, contain or lie inside an input model"):
        merge_models([base_dir, tuned_dir], output, overwrite=True)
    assert (tuned_dir / "model.safetensors").is_file()


def test_row_blocks_give_the_same_average_as_whole_tensors(tuned_dir, base_dir, tmp_path, monkeypatch):
    merge_models([tuned_dir, base_dir], tmp_path / "whole", weights=[0.3, 0.7])
    monkeypatch.setattr("piccolo_embed.modeling.merge._BLOCK_ELEMENTS", 100)  # 3 rows of 32 per block
    merge_models([tuned_dir, base_dir], tmp_path / "blocks", weights=[0.3, 0.7])
    whole, blocks = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "blocks" / "model.safetensors"),
    )
    assert whole.keys() == blocks.keys() and all(torch.equal(whole[k], blocks[k]) for k in whole)


# ----------------------------------------------------------------------------- command line


def test_cli_merge_writes_what_the_library_writes(tuned_dir, base_dir, tmp_path, capsys):
    argv = ["merge", "--models", str(tuned_dir), str(base_dir), "--weights", "0.7", "0.3"]
    assert main([*argv, "--output", str(tmp_path / "cli")]) == 0
    assert f"merged 0.7 x {tuned_dir}, 0.3 x {base_dir} -> {tmp_path / 'cli'}" in capsys.readouterr().out
    merge_models([tuned_dir, base_dir], tmp_path / "api", weights=[0.7, 0.3])
    ours, theirs = load_file(tmp_path / "cli" / "model.safetensors"), load_file(tmp_path / "api" / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert main(["merge", "--models", str(tuned_dir), str(base_dir), "--output", str(tmp_path / "equal")]) == 0
    assert "merged 0.5 x" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "1"], "got 1 weights for 2 models"),
        (["--weights", "0", "0"], "all weights are zero"),
        (["--weights", "1", "-1"], "weight 2 is -1.0"),
    ],
)
def test_cli_errors_are_one_line(tuned_dir, base_dir, tmp_path, capsys, extra, message):
    argv = ["merge", "--models", str(tuned_dir), str(base_dir), "--output", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("piccolo-embed merge: error: ") and message in err and err.count("\n") == 1


def test_cli_overwrite(tuned_dir, base_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old", encoding="utf-8")
    argv = ["merge", "--models", str(tuned_dir), str(base_dir), "--output", str(out)]
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0 and not (out / "old.txt").exists()


def test_cli_help_says_weights_are_normalised(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    assert "normalised to sum to 1" in " ".join(capsys.readouterr().out.split())


def test_merged_weights_keep_the_first_models_file_mode(tuned_dir, base_dir, tmp_path):
    (tuned_dir / "model.safetensors").chmod(0o644)
    merge_models([tuned_dir, base_dir], tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").stat().st_mode & 0o777 == 0o644
