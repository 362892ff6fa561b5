import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from piccolo_embed import Embedder, Role, RolePreset, RoleSpec

TEXTS = ["今天天气很好", "北京的美食推荐", "如何学习编程", "我们去公园散步吧，明天会下雨吗？", "机器人", ""]


@pytest.fixture
def embedder(tiny_bert_dir):
    return Embedder.from_pretrained(tiny_bert_dir, device="cpu")


def _reference(model_dir, texts, prefix, max_length):
    """Plain one-by-one HF forward, masked mean pooling and L2 normalisation, written out by hand."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    rows = []
    for text in texts:
        enc = tokenizer(prefix + text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        mask = enc["attention_mask"][0].unsqueeze(-1).float()
        mean = (hidden * mask).sum(0) / mask.sum()
        rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("role", [Role.QUERY, Role.PASSAGE, None])
def test_matches_hand_written_forward_and_mean_pool(embedder, tiny_bert_dir, role):
    spec = embedder.roles[Role.coerce(role)]
    expected = _reference(tiny_bert_dir, TEXTS, spec.prefix, spec.max_length)
    got = embedder.encode(TEXTS, role)
    assert got.dtype == np.float32
    assert got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_xlm_roberta_family_loads_and_matches_reference(tiny_xlmr_dir):
    embedder = Embedder.from_pretrained(tiny_xlmr_dir, roles="e5", device="cpu")
    expected = _reference(tiny_xlmr_dir, TEXTS, "query: ", 128)
    np.testing.assert_allclose(embedder.encode(TEXTS, "query"), expected, atol=1e-5)
    assert embedder.tokenize(["好"], "query")[0][0] == 0  # <s>, fairseq id layout


def test_roles_change_the_vectors(embedder):
    query = embedder.encode(["北京"], "query")
    passage = embedder.encode(["北京"], "passage")
    plain = embedder.encode(["北京"], None)
    assert not np.allclose(query, passage)
    assert not np.allclose(query, plain)


def test_token_budget_batching_equals_one_by_one_and_keeps_order(embedder):
    rng = np.random.default_rng(0)
    alphabet = list("今天气很好我们去公园散步明北京上海的美食推荐如何学习编程机器人")
    texts = ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(1, 120, size=40)]
    one_by_one = np.stack([embedder.encode([t], "passage", batch_size=1)[0] for t in texts])
    batched = embedder.encode(texts, "passage", batch_size=16, max_batch_tokens=300)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    shuffled = list(reversed(texts))
    np.testing.assert_allclose(embedder.encode(shuffled, "passage"), one_by_one[::-1], atol=1e-5)


def test_prefix_and_per_role_truncation(tiny_bert_dir):
    roles = {
        Role.QUERY: RoleSpec("查询：", 8),
        Role.PASSAGE: RoleSpec("结果：", 20),
        Role.NONE: RoleSpec("", 128),
    }
    embedder = Embedder.from_pretrained(tiny_bert_dir, roles=roles, device="cpu")
    tokenizer = embedder.tokenizer
    long_text = "今天天气很好" * 10
    query_ids = embedder.tokenize([long_text], "query")[0]
    passage_ids = embedder.tokenize([long_text], "passage")[0]
    plain_ids = embedder.tokenize([long_text], None)[0]
    assert (len(query_ids), len(passage_ids), len(plain_ids)) == (8, 20, 62)
    assert tokenizer.convert_ids_to_tokens(query_ids[1:4]) == ["查", "询", "："]
    assert tokenizer.convert_ids_to_tokens(passage_ids[1:4]) == ["结", "果", "："]
    assert tokenizer.convert_ids_to_tokens(plain_ids[1:2]) == ["今"]
    # a truncated query embeds like the same text cut by hand
    cut = tokenizer.decode(query_ids[4:-1]).replace(" ", "")
    np.testing.assert_allclose(embedder.encode([long_text], "query"), embedder.encode([cut], "query"), atol=1e-5)


def test_role_max_length_is_capped_at_model_limit(tiny_bert_dir):
    embedder = Embedder.from_pretrained(tiny_bert_dir, roles=RolePreset.PICCOLO, device="cpu")
    assert embedder.roles[Role.PASSAGE] == RoleSpec("结果：", 128)
    assert embedder.roles[Role.QUERY] == RoleSpec("查询：", 64)


def test_empty_input_has_model_width(embedder):
    assert embedder.encode([], "query").shape == (0, 32)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["好", None], r"texts\[1\] must be a string, got None"),
        (["好", "坏", 3], r"texts\[2\] must be a string, got int"),
        ([["嵌套"]], r"texts\[0\] must be a string, got list"),
        ("单个字符串", "not a single string"),
        (None, "got NoneType"),
    ],
)
def test_bad_input_names_the_item(embedder, texts, message):
    with pytest.raises(TypeError, match=message):
        embedder.encode(texts)


def test_unknown_role_lists_choices(embedder):
    with pytest.raises(ValueError, match="query, passage, none"):
        embedder.encode(["好"], role="document")


def test_cpu_rejects_half_precision(tiny_bert_dir):
    with pytest.raises(ValueError, match="needs CUDA"):
        Embedder.from_pretrained(tiny_bert_dir, device="cpu", precision="fp16")


def test_batches_pad_only_to_their_own_longest_row(tiny_bert_dir):
    seen = []

    class RecordingRunner:
        def __call__(self, input_ids, attention_mask):
            seen.append((input_ids.shape, attention_mask.sum(axis=1).tolist()))
            return np.ones((input_ids.shape[0], 32), dtype=np.float32) / np.sqrt(32)

    base = Embedder.from_pretrained(tiny_bert_dir, device="cpu")
    embedder = Embedder(base.model, base.roles, runner=RecordingRunner(), batch_size=2)
    embedder.encode(["好" * 30, "好", "好" * 29, "好" * 2], None)
    assert [(shape, lengths) for shape, lengths in seen] == [((2, 32), [32, 31]), ((2, 4), [4, 3])]


def test_count_tokens_counts_prefix_and_special_tokens_with_and_without_truncation(tiny_bert_dir):
    roles = {Role.QUERY: RoleSpec("查询：", 8), Role.PASSAGE: RoleSpec("结果：", 20), Role.NONE: RoleSpec("", 128)}
    embedder = Embedder.from_pretrained(tiny_bert_dir, roles=roles, device="cpu")
    texts = ["今天天气很好" * 10, "好"]  # the tiny vocabulary has one token per CJK character, plus [CLS] and [SEP]
    assert embedder.count_tokens(texts, "query") == [8, 3 + 1 + 2]
    assert embedder.count_tokens(texts, "query", truncate=False) == [3 + 60 + 2, 3 + 1 + 2]
    assert embedder.count_tokens(texts, None, truncate=False) == [62, 3]
    assert embedder.count_tokens(texts, "passage") == [len(ids) for ids in embedder.tokenize(texts, "passage")]
    assert embedder.count_tokens([], "query", truncate=False) == []


def test_onnx_engines_run_on_cpu_and_need_their_export(tiny_bert_dir):
    with pytest.raises(ValueError, match="engine onnx runs on CPU only"):
        Embedder.from_pretrained(tiny_bert_dir, device="cuda", engine="onnx")
    with pytest.raises(FileNotFoundError, match="piccolo-embed export"):
        Embedder.from_pretrained(tiny_bert_dir, engine="onnx-int8")
    with pytest.raises(ValueError, match="choose one of: torch, torch-bf16, onnx, onnx-int8"):
        Embedder.from_pretrained(tiny_bert_dir, engine="onnx8")
