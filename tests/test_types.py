"""The closed choices of ``piccolo_embed.types``: the precision table and the engine choice."""

import pytest

from piccolo_embed.types import Engine, Precision


@pytest.mark.parametrize(
    ("asked", "device", "fast_bf16", "expected"),
    [
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp16"),
        ("fp32", "cuda", True, "fp32"),
        ("fp16", "cuda", True, "fp16"),
        ("bf16", "cuda", False, "bf16"),
        ("auto", "cpu", True, "bf16"),
        ("auto", "cpu", False, "fp32"),
        ("fp32", "cpu", True, "fp32"),
        ("bf16", "cpu", True, "bf16"),
    ],
)
def test_resolve_table(asked: str, device: str, fast_bf16: bool, expected: str) -> None:
    assert Precision.parse(asked).resolve(device, fast_bf16=fast_bf16) is Precision(expected)


@pytest.mark.parametrize(
    ("asked", "fast_bf16", "message"),
    [("fp16", True, "fp16 needs CUDA"), ("bf16", False, "needs AMX .* has no AMX")],
)
def test_resolve_refuses_slow_or_impossible_cpu_precisions(asked: str, fast_bf16: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Precision.parse(asked).resolve("cpu", fast_bf16=fast_bf16)


def test_resolve_probes_the_machine_only_when_the_answer_depends_on_it(monkeypatch) -> None:
    from piccolo_embed import hardware

    def no_probe(_device_type: str) -> bool:
        raise AssertionError("probed")

    monkeypatch.setattr(hardware, "bf16_is_fast", no_probe)
    assert Precision.FP32.resolve("cpu") is Precision.FP32
    assert Precision.BF16.resolve("cuda") is Precision.BF16
    monkeypatch.setattr(hardware, "bf16_is_fast", lambda device_type: device_type == "cuda")
    assert Precision.AUTO.resolve("cuda") is Precision.BF16
    assert Precision.AUTO.resolve("cpu") is Precision.FP32


def test_engine_names_and_bad_value_lists_the_choices() -> None:
    assert [engine.value for engine in Engine] == ["torch", "torch-bf16", "onnx", "onnx-int8"]
    assert Engine.parse(" ONNX-int8 ") is Engine.ONNX_INT8
    with pytest.raises(ValueError, match="unknown Engine 'onnx8'; choose one of: torch, torch-bf16, onnx, onnx-int8"):
        Engine.parse("onnx8")


def test_engine_fixes_the_precision_of_every_engine_but_torch() -> None:
    assert Engine.TORCH.precision(Precision.FP16) is Precision.FP16
    assert Engine.TORCH_BF16.precision(Precision.AUTO) is Precision.BF16
    assert [engine.onnx for engine in Engine] == [False, False, True, True]
    for engine, asked in ((Engine.TORCH_BF16, Precision.FP32), (Engine.ONNX_INT8, Precision.BF16)):
        with pytest.raises(ValueError, match="applies to engine torch only"):
            engine.precision(asked)
