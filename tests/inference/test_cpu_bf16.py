"""bf16 on CPU (``precision="bf16"``, engine ``torch-bf16``, ``auto`` with AMX): the AMX bf16-weights runner.

It stays close to fp32, and is refused where it would be slow.
"""

import numpy as np
import pytest
import torch

from piccolo_embed import Embedder, hardware
from piccolo_embed.inference import cpu_bf16
from piccolo_embed.inference.cpu_bf16 import CpuBf16Runner
from piccolo_embed.inference.unpadded import UnpaddedRunner

TEXTS = ["今天天气很好", "北京明天会下雨吗？要带雨伞吗", "深度学习模型在中文检索中的应用" * 5, "好"]


def test_bf16_on_an_amx_cpu_runs_bf16_weights_close_to_fp32(tiny_bert_dir):
    if not cpu_bf16.cpu_has_amx():
        pytest.skip("this CPU has no AMX")
    fp32 = Embedder.from_pretrained(tiny_bert_dir, device="cpu", precision="fp32")
    bf16 = Embedder.from_pretrained(tiny_bert_dir, device="cpu", precision="bf16")
    assert isinstance(fp32.runner, UnpaddedRunner)
    assert isinstance(bf16.runner, CpuBf16Runner)
    a, b = fp32.encode(TEXTS, "passage"), bf16.encode(TEXTS, "passage")
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.999  # same rows, same order, within bf16 rounding


def test_bf16_is_refused_on_a_cpu_without_amx(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_has_amx", lambda: False)
    with pytest.raises(ValueError, match="no AMX"):
        Embedder.from_pretrained(tiny_bert_dir, device="cpu", precision="bf16")


def test_auto_precision_on_a_cpu_without_amx_stays_fp32(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    embedder = Embedder.from_pretrained(tiny_bert_dir, device="cpu")
    assert isinstance(embedder.runner, UnpaddedRunner)  # fp32 weights, no autocast
    assert next(embedder.model.parameters()).dtype == torch.float32


def test_auto_precision_and_engine_torch_bf16_on_an_amx_cpu_run_bf16_weights(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(cpu_bf16, "cpu_has_amx", lambda: True)
    for options in ({}, {"engine": "torch-bf16"}):
        embedder = Embedder.from_pretrained(tiny_bert_dir, device="cpu", **options)
        assert isinstance(embedder.runner, CpuBf16Runner)  # built only: this CPU may lack AMX, so no encode


def test_engine_torch_bf16_takes_no_other_precision(tiny_bert_dir):
    with pytest.raises(ValueError, match="applies to engine torch only"):
        Embedder.from_pretrained(tiny_bert_dir, device="cpu", engine="torch-bf16", precision="fp32")
