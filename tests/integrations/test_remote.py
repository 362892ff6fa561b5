"""RemoteEncoder against a running server: same vectors as the local model, batches split, errors explained."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

pytest.importorskip("fastapi")

from piccolo_embed import Embedder, Encoder, Role
from piccolo_embed.integrations.remote import RemoteEncoder, RemoteError


@pytest.mark.parametrize("role", [Role.QUERY, Role.PASSAGE, Role.NONE])
def test_vectors_equal_the_local_model(server, reference: Embedder, texts: list[str], role: Role) -> None:
    remote = RemoteEncoder(server.url + "/v1/", api_key=server.api_key, batch_size=3)  # 4 texts: two requests
    assert isinstance(remote, Encoder)
    got = remote.encode(texts * 3, role=role)
    assert got.dtype == np.float32 and got.shape == (12, reference.dim)
    np.testing.assert_allclose(got, reference.encode(texts * 3, role), atol=1e-5)
    np.testing.assert_allclose(asyncio.run(remote.aencode(texts, role=role)), got[:4], atol=1e-6)
    assert (remote.name, remote.dim) == ("piccolo", reference.dim)
    assert remote.encode([], role=role).shape == (0, reference.dim)


def test_no_role_means_the_servers_default(server, reference: Embedder, texts: list[str]) -> None:
    got = RemoteEncoder(server.url, api_key=server.api_key).encode(texts)
    np.testing.assert_allclose(got, reference.encode(texts), atol=1e-5)  # the server's default: no instruction


def test_server_errors_carry_the_servers_message(server) -> None:
    with pytest.raises(RemoteError, match="HTTP 401"):
        RemoteEncoder(server.url, api_key="wrong").encode(["好"], role="query")
    with pytest.raises(RemoteError, match=r"HTTP 400: .*9 texts, more than the 8 allowed"):
        RemoteEncoder(server.url, api_key=server.api_key, batch_size=9).encode(["好"] * 9)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string"):
        RemoteEncoder(server.url).encode(["好", 3])


def test_an_unreachable_server_is_named() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bind one, note it, release it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteError, match=rf"cannot reach the piccolo-embed server at http://127.0.0.1:{port}"):
        RemoteEncoder(f"http://127.0.0.1:{port}", timeout=2).encode(["好"])
    with pytest.raises(RemoteError, match="is it running"):
        asyncio.run(RemoteEncoder(f"http://127.0.0.1:{port}", timeout=2).aencode(["好"]))
