import json

import numpy as np
import pytest

from piccolo_embed import Embedder
from piccolo_embed.cli import build_parser, main

TEXTS = ["今天天气很好", "北京的美食推荐", "如何学习编程", "我们去公园散步"]


def _run(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_encode_file_matches_api(tiny_bert_dir, tmp_path, suffix):
    source = tmp_path / f"in{suffix}"
    if suffix == ".txt":
        source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    else:
        lines = [json.dumps({"text": t}, ensure_ascii=False) for t in TEXTS]
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    argv = ["encode", "--model", str(tiny_bert_dir), "--role", "query", "--input", str(source)]
    assert _run([*argv, "--output", str(out), "--chunk-size", "3", "--device", "cpu"]) == 0
    expected = Embedder.from_pretrained(tiny_bert_dir, device="cpu").encode(TEXTS, "query")
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp.npy")] == []


def test_encode_bad_jsonl_line_names_file_and_line(tiny_bert_dir, tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "好"}\n{"txt": "坏"}\n', encoding="utf-8")
    out = tmp_path / "out.npy"
    code = main(["encode", "--model", str(tiny_bert_dir), "--input", str(source), "--output", str(out)])
    assert code == 2
    assert "bad.jsonl:2: field 'text'" in capsys.readouterr().err
    assert not out.exists()


def test_encode_input_that_is_not_utf8_names_file_and_line(tiny_bert_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes("好\n".encode() + b"\xfe\n")
    code = main(["encode", "--model", str(tiny_bert_dir), "--input", str(source), "--output", str(tmp_path / "o.npy")])
    assert code == 2
    assert "in.txt:2: not valid UTF-8 at byte 1" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()


def test_encode_missing_model_is_one_line_error(tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("好\n", encoding="utf-8")
    code = main(["encode", "--model", str(tmp_path / "nope"), "--input", str(source), "--output", "x.npy"])
    assert code == 2
    assert "model directory not found" in capsys.readouterr().err


def test_demo_runs_with_given_model(tiny_bert_dir, capsys):
    assert main(["demo", "--model", str(tiny_bert_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("查询: ") == 8
    assert "paraphrase queries ranked their passage first" in out


def test_onnx_backend_via_cli_matches_torch(tiny_bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    assert main(["export", "--model", str(tiny_bert_dir), "--format", "onnx", "--quantize", "int8"]) == 0
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    torch_vectors = Embedder.from_pretrained(tiny_bert_dir, device="cpu").encode(TEXTS, "passage")
    for engine, tolerance in (("onnx", 1e-4), ("onnx-int8", None)):
        out = tmp_path / f"{engine}.npy"
        argv = ["encode", "--model", str(tiny_bert_dir), "--role", "passage", "--input", str(source)]
        assert main([*argv, "--output", str(out), "--engine", engine]) == 0
        vectors = np.load(out)
        if tolerance is None:
            assert (vectors * torch_vectors).sum(axis=1).mean() > 0.99
        else:
            np.testing.assert_allclose(vectors, torch_vectors, atol=tolerance)


HEAVY_MODULES = ("torch", "transformers", "sentence_transformers", "faiss", "mteb", "fastapi", "scipy", "sklearn")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["encode", "--no-such-flag"]])
def test_help_version_and_argument_errors_import_no_heavy_library(argv):
    # A fresh interpreter: this test process has long imported torch.
    import subprocess
    import sys

    probe = (
        "import sys\nfrom piccolo_embed.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.splitlines()[-1] == "[]"
