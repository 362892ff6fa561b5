"""``piccolo-embed serve``: arguments become settings, and the handler hands uvicorn a working app."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient

from piccolo_embed.cli import build_parser
from piccolo_embed.cli.serve import FLAGS, GIL_SWITCH_INTERVAL_S, run, settings_from_args
from piccolo_embed.serving import server
from piccolo_embed.serving.settings import ServerSettings
from piccolo_embed.types import Role

MODULES = ("piccolo_embed.cli.serve",)


def test_arguments_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICCOLO_EMBED_API_KEY", "from-env")
    argv = ["serve", "--model", "m", "--default-role", "passage", "--max-inputs", "16", "--max-wait-ms", "2"]
    settings = settings_from_args(build_parser(MODULES).parse_args([*argv, "--batch-size", "8"]))
    assert settings.default_role is Role.PASSAGE
    assert (settings.max_inputs_per_request, settings.max_wait_ms, settings.max_batch_size) == (16, 2.0, 8)
    assert settings.api_key == "from-env"
    assert settings.model_name == "m"
    explicit = build_parser(MODULES).parse_args([*argv, "--api-key", "k", "--served-model-name", "piccolo"])
    assert settings_from_args(explicit).api_key == "k"
    assert settings_from_args(explicit).model_name == "piccolo"


def test_flag_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PICCOLO_EMBED_API_KEY", raising=False)
    settings = settings_from_args(build_parser(MODULES).parse_args(["serve", "--model", "m"]))
    assert settings == ServerSettings(model_name="m")
    named_elsewhere = {"model_name", "default_role", "api_key"}  # --served-model-name, --default-role, --api-key
    assert set(FLAGS) == {field.name for field in dataclasses.fields(ServerSettings)} - named_elsewhere


def test_invalid_limits_are_user_errors() -> None:
    args = build_parser(MODULES).parse_args(["serve", "--model", "m", "--max-queue-texts", "4"])
    with pytest.raises(ValueError, match="--max-inputs"):
        settings_from_args(args)
    args = build_parser(MODULES).parse_args(["serve", "--model", "m", "--threads", "0"])
    with pytest.raises(ValueError, match="--threads"):
        run(args)  # refused before the (missing) model is loaded


def test_handler_serves_the_model(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, object] = {}
    monkeypatch.delenv("PICCOLO_EMBED_API_KEY", raising=False)
    monkeypatch.setattr(server, "serve", lambda app, settings, **kwargs: captured.update(app=app, **kwargs))
    switch_interval = sys.getswitchinterval()
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: captured.update(switch_interval=seconds))
    threads = torch.get_num_threads()  # restored below: run() sets torch's global thread count
    args = build_parser(MODULES).parse_args(
        ["serve", "--model", str(tiny_bert_dir), "--port", "8123", "--threads", "1"]
    )
    try:
        assert run(args) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert (captured["host"], captured["port"], captured["access_log"]) == ("127.0.0.1", 8123, False)
    assert captured["switch_interval"] == GIL_SWITCH_INTERVAL_S < switch_interval  # the worker gets the GIL sooner
    with TestClient(captured["app"]) as client:
        info = client.get("/info").json()
        assert info["model"] == str(tiny_bert_dir)
        assert client.post("/v1/embeddings", json={"input": "你好"}).status_code == 200


def test_every_thread_by_default(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, object] = {}
    monkeypatch.setattr(server, "serve", lambda app, settings, **kwargs: captured.update(app=app))
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: None)
    threads = torch.get_num_threads()
    assert run(build_parser(MODULES).parse_args(["serve", "--model", str(tiny_bert_dir)])) == 0
    assert torch.get_num_threads() == threads
    with TestClient(captured["app"]) as client:
        assert client.get("/health").status_code == 200
