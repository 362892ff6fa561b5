"""Vocabulary trimming: covered texts keep their segmentation and embed identically (WordPiece and Unigram)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast

from piccolo_embed import Embedder
from piccolo_embed.cli import build_parser
from piccolo_embed.modeling.trim import read_trim_map, restore_vocabulary, trim_vocabulary

CORPUS = ["今天天气很好", "我们去公园散步", "明天会下雨吗", "北京上海的美食推荐", "如何学习编程"]
OTHER = ["机器人工智能", "医院看病感冒发烧"]


def _embed(model_dir: Path, texts: list[str]) -> np.ndarray:
    return Embedder.from_pretrained(model_dir, roles="plain").encode(texts)


def test_wordpiece_covered_texts_embed_identically(tiny_bert_dir: Path, tmp_path: Path) -> None:
    report = trim_vocabulary(tiny_bert_dir, CORPUS, tmp_path / "trimmed")
    assert report.new_vocab < report.old_vocab and report.texts_with_unk == 0
    config = json.loads((tmp_path / "trimmed" / "config.json").read_text())
    assert config["vocab_size"] == report.new_vocab
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "trimmed"))
    assert len(tokenizer) == report.new_vocab
    assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"} <= set(tokenizer.get_vocab())
    np.testing.assert_array_equal(_embed(tiny_bert_dir, CORPUS), _embed(tmp_path / "trimmed", CORPUS))
    assert tokenizer.unk_token_id in tokenizer(OTHER[0])["input_ids"]  # uncovered text: now unknown


def _unigram_model(directory: Path) -> Path:
    """A tiny random BERT whose tokenizer is a Unigram model trained here (like XLM-R's, without the hub)."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    sentences = [*CORPUS, *OTHER, "今天北京", "北京今天天气", "学习编程很好", "散步去公园"] * 3
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(sentences, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=64,
    )  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=1,
    )  # fmt: skip
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def test_unigram_covered_texts_keep_segmentation_and_embeddings(tmp_path: Path) -> None:
    model_dir = _unigram_model(tmp_path / "unigram")
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "Unigram"
    report = trim_vocabulary(model_dir, CORPUS[:3], tmp_path / "trimmed")
    assert report.new_vocab < report.old_vocab
    before = AutoTokenizer.from_pretrained(str(model_dir))
    after = AutoTokenizer.from_pretrained(str(tmp_path / "trimmed"))
    for text in CORPUS[:3]:
        assert before.tokenize(text) == after.tokenize(text)
    trimmed = json.loads((tmp_path / "trimmed" / "tokenizer.json").read_text())["model"]["vocab"]
    assert min(s for _, s in trimmed) == min(s for _, s in spec["model"]["vocab"])  # unknown-char score kept
    np.testing.assert_array_equal(_embed(model_dir, CORPUS[:3]), _embed(tmp_path / "trimmed", CORPUS[:3]))


def test_cli_trims_a_jsonl_corpus_with_the_models_prefixes(tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"query": CORPUS[0], "pos": CORPUS[1:3], "neg": []}, ensure_ascii=False) + "\n")
    extra = tmp_path / "more.txt"
    extra.write_text(CORPUS[3] + "\n")
    parser = build_parser(("piccolo_embed.cli.trim_vocab",))
    args = parser.parse_args(
        ["trim-vocab", "--model", str(tiny_bert_dir), "--corpus", str(corpus), str(extra), "--prefix", "查询: ",
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    assert args.func(args) == 0
    texts = ["查询: " + CORPUS[0], CORPUS[3]]
    np.testing.assert_array_equal(_embed(tiny_bert_dir, texts), _embed(tmp_path / "out", texts))


def test_rejects_unsupported_tokenizers_and_in_place_output(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must differ"):
        trim_vocabulary(tiny_bert_dir, CORPUS, tiny_bert_dir)
    spec = json.loads((tiny_bert_dir / "tokenizer.json").read_text())
    spec["model"]["type"] = "BPE"
    (tiny_bert_dir / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises((ValueError, Exception)):
        trim_vocabulary(tiny_bert_dir, CORPUS, tmp_path / "x")


@pytest.mark.slow
def test_starter_trimmed_to_chinese_texts_embeds_identically(tmp_path: Path) -> None:
    from piccolo_embed.modeling.loading import resolve_model_dir

    starter = resolve_model_dir("starter")
    texts = [*CORPUS, *OTHER, "明天北京有大雨，出门记得带伞。", "Hello world, 你好 ok?"]
    with_prefix = texts + ["query: " + t for t in texts]
    report = trim_vocabulary(starter, with_prefix, tmp_path / "trimmed")
    assert report.new_vocab < 2000
    a = Embedder.from_pretrained(starter).encode(texts, "query")
    b = Embedder.from_pretrained(tmp_path / "trimmed").encode(texts, "query")
    np.testing.assert_allclose(a, b, atol=1e-6)


MODEL_FILE = "model.safetensors"


def _vocab_rows(directory: Path) -> torch.Tensor:
    return load_file(str(directory / "model.safetensors"))["embeddings.word_embeddings.weight"]


def test_restore_writes_trained_rows_into_the_base_vocabulary(tiny_bert_dir: Path, tmp_path: Path) -> None:
    trimmed = tmp_path / "trimmed"
    trim_vocabulary(tiny_bert_dir, CORPUS, trimmed)
    kept = read_trim_map(trimmed)
    assert kept is not None and len(kept) == len(AutoTokenizer.from_pretrained(str(trimmed)))
    # Stand-in for training: every tensor of the trimmed model moves.
    tensors = {name: t + 0.01 * torch.randn_like(t) for name, t in load_file(str(trimmed / MODEL_FILE)).items()}
    save_file(tensors, str(trimmed / MODEL_FILE))
    restore_vocabulary(trimmed, tiny_bert_dir, kept)

    base_rows, restored = _vocab_rows(tiny_bert_dir), _vocab_rows(trimmed)
    assert restored.shape == base_rows.shape
    untouched = sorted(set(range(base_rows.shape[0])) - set(kept))
    torch.testing.assert_close(restored[untouched], base_rows[untouched], rtol=0, atol=0)
    torch.testing.assert_close(restored[kept], tensors["embeddings.word_embeddings.weight"], rtol=0, atol=0)
    base_tok, new_tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir)), AutoTokenizer.from_pretrained(str(trimmed))
    for text in [*CORPUS, *OTHER, "Hello 世界 ok?"]:
        assert new_tok(text)["input_ids"] == base_tok(text)["input_ids"]
    assert not (trimmed / "vocab_trim.json").exists()
    assert SentenceTransformer(str(trimmed), device="cpu").encode(OTHER).shape == (2, 32)


def test_restore_refuses_a_checkpoint_that_does_not_match_the_trim(tiny_bert_dir: Path, tmp_path: Path) -> None:
    trim_vocabulary(tiny_bert_dir, CORPUS, tmp_path / "trimmed")
    with pytest.raises(ValueError, match="no vocabulary tensor"):
        restore_vocabulary(tmp_path / "trimmed", tiny_bert_dir, [0, 1, 2])


def test_trimming_a_trimmed_model_maps_back_to_the_original_base(tiny_bert_dir: Path, tmp_path: Path) -> None:
    trim_vocabulary(tiny_bert_dir, CORPUS, tmp_path / "once")
    trim_vocabulary(tmp_path / "once", CORPUS[:2], tmp_path / "twice")
    base = AutoTokenizer.from_pretrained(str(tiny_bert_dir)).convert_ids_to_tokens
    twice = AutoTokenizer.from_pretrained(str(tmp_path / "twice")).convert_ids_to_tokens
    kept = read_trim_map(tmp_path / "twice")
    assert [base(i) for i in kept] == [twice(i) for i in range(len(kept))]


def test_only_the_model_is_copied_not_a_runs_leftovers(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "trained"
    Embedder.from_pretrained(tiny_bert_dir, roles="plain").save_pretrained(model)
    for leftover in ("trimmed-base", "checkpoints/step-1"):
        (model / leftover).mkdir(parents=True)
        (model / leftover / "model.safetensors").write_bytes(b"x")
    (model / "log.jsonl").write_text("{}\n")
    trim_vocabulary(model, CORPUS, tmp_path / "trimmed")
    names = {p.name for p in (tmp_path / "trimmed").iterdir()}
    assert not names & {"trimmed-base", "checkpoints", "log.jsonl"}
    modules = [m["path"] for m in json.loads((model / "modules.json").read_text()) if m["path"]]
    assert modules and set(modules) <= names  # the model's own module folders are kept
    np.testing.assert_array_equal(_embed(model, CORPUS), _embed(tmp_path / "trimmed", CORPUS))
