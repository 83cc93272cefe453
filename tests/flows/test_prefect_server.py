"""flows.prefect_server: which Prefect server the pipeline uses, and a clear error when one cannot start."""

from __future__ import annotations

import os
import socket

import pytest

from flows.prefect_server import API_ENV, LocalServer, healthy, prefect_api

pytestmark = pytest.mark.integration


def test_configured_server_is_used_as_is(prefect_server, monkeypatch):
    monkeypatch.setenv(API_ENV, prefect_server.api_url)
    with prefect_api(reuse_port=None) as url:
        assert url == prefect_server.api_url


def test_running_local_server_is_reused_and_the_env_restored(prefect_server, monkeypatch):
    monkeypatch.delenv(API_ENV, raising=False)
    with prefect_api(reuse_port=prefect_server.port) as url:
        assert url == prefect_server.api_url and os.environ[API_ENV] == url
        assert healthy(url)
    assert API_ENV not in os.environ


def test_server_that_cannot_start_says_why(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalServer(port=taken.getsockname()[1], home=tmp_path, ui=False)
        with pytest.raises(RuntimeError) as err:
            server.start(timeout_s=120)
    message = str(err.value)
    assert f"127.0.0.1:{server.port}" in message and "did not start" in message and API_ENV in message
    assert server.process is None
