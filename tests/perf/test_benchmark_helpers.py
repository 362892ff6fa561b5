"""The throughput benchmark's arithmetic: FLOPs from the config, and a text mix that nothing truncates."""

import pytest
from transformers import AutoModel


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("encode_throughput")


def test_flops_count_every_non_embedding_weight_twice_plus_attention(bench, tiny_bert_dir):
    model = AutoModel.from_pretrained(tiny_bert_dir)
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("embeddings", "pooler")))
    lengths = [3, 10]
    flops, counted = bench.model_flops(tiny_bert_dir, lengths)
    assert counted == params
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    assert flops == sum(n * 2 * params + 4 * layers * n * n * hidden for n in lengths)


def test_text_mix_is_seeded_sized_and_under_the_token_limit(bench, tmp_path):
    def count(texts):
        return [len(t) + 2 for t in texts]  # one token per character plus [CLS]/[SEP]

    texts, source = bench.build_texts(300, 0, tmp_path / "no-such-data", count, max_tokens=128)
    again, _ = bench.build_texts(300, 0, tmp_path / "no-such-data", count, max_tokens=128)
    assert source.startswith("generated")
    assert texts == again
    assert all(n < 128 for n in count(texts))
    # the long band cannot fit 128 tokens, so the mix is short and medium texts only
    assert len(texts) == 300 - 60
