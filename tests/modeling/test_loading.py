import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from piccolo_embed import Embedder, Role, RolePreset, RoleSpec
from piccolo_embed.modeling.loading import ModelLoadError, resolve_model_dir
from piccolo_embed.modeling.roles_io import ROLE_FILE, load_role_specs, save_role_specs

TEXTS = ["今天天气很好", "北京的美食推荐", "如何学习编程"]


def test_saved_model_matches_sentence_transformers_with_prompts(tiny_bert_dir, tmp_path):
    embedder = Embedder.from_pretrained(tiny_bert_dir, roles="piccolo", device="cpu")
    out = embedder.save_pretrained(tmp_path / "saved")
    st_model = SentenceTransformer(str(out), device="cpu")
    for role in ("query", "passage"):
        ours = embedder.encode(TEXTS, role)
        theirs = st_model.encode(TEXTS, prompt_name=role)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(TEXTS), st_model.encode(TEXTS), atol=1e-5)
    config = json.loads((out / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"]["query"] == "查询："
    assert config["prompts"]["passage"] == "结果："


def test_saved_model_reloads_with_its_roles(tiny_bert_dir, tmp_path):
    roles = {
        Role.QUERY: RoleSpec("问：", 16),
        Role.PASSAGE: RoleSpec("答：", 100),
        Role.NONE: RoleSpec("", 50),
    }
    embedder = Embedder.from_pretrained(tiny_bert_dir, roles=roles, device="cpu")
    out = embedder.save_pretrained(tmp_path / "saved")
    reloaded = Embedder.from_pretrained(out, device="cpu")
    assert reloaded.roles == roles
    np.testing.assert_allclose(reloaded.encode(TEXTS, "query"), embedder.encode(TEXTS, "query"), atol=1e-6)


def test_plain_hf_model_gets_piccolo_roles_and_normalised_mean_pooling(tiny_bert_dir):
    embedder = Embedder.from_pretrained(tiny_bert_dir, device="cpu")
    assert embedder.roles[Role.QUERY] == RoleSpec("查询：", 64)
    assert [type(m).__name__ for m in embedder.model] == ["Transformer", "Pooling", "Normalize"]


def test_st_model_without_normalize_gets_one(tiny_bert_dir, tmp_path):
    st_model = SentenceTransformer(str(tiny_bert_dir), device="cpu")  # Transformer + mean Pooling only
    st_model.save_pretrained(str(tmp_path / "st"))
    embedder = Embedder.from_pretrained(tmp_path / "st", roles=RolePreset.E5, device="cpu")
    assert type(embedder.model[-1]).__name__ == "Normalize"
    np.testing.assert_allclose(np.linalg.norm(embedder.encode(TEXTS), axis=1), 1.0, atol=1e-5)
    assert embedder.roles[Role.QUERY].prefix == "query: "


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a model directory"):
        resolve_model_dir(tmp_path / "empty")


def test_hub_id_offline_names_the_situation(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"HF_HUB_OFFLINE is set.*starter"):
        resolve_model_dir("sensenova/piccolo-large-zh")


def test_role_file_round_trip_and_errors(tmp_path):
    specs = RolePreset.PICCOLO.specs(512)
    save_role_specs(tmp_path, specs)
    assert load_role_specs(tmp_path) == specs
    (tmp_path / ROLE_FILE).write_text('{"roles": {"query": {"prefix": "q"}}}', encoding="utf-8")
    with pytest.raises(ValueError, match="malformed"):
        load_role_specs(tmp_path)
    (tmp_path / ROLE_FILE).write_text('{"roles": {"query": {"prefix": "q", "max_length": 8}}}', encoding="utf-8")
    with pytest.raises(ValueError, match="lacks passage, none"):
        load_role_specs(tmp_path)
    assert load_role_specs(tmp_path / "absent") is None
