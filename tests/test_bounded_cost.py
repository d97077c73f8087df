"""A server that sends its response head one byte at a time (a "slowloris" answer) must not hold a request
for ever: every recv gets a byte before the read timeout, so only a deadline on the whole head ends it."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest
import requests
import yaml

from phasegpt_ckpt.errors import MirrorFailed
from phasegpt_ckpt.source import web
from phasegpt_ckpt.source.mirrors.base import Source
from phasegpt_ckpt.source.transfer import transfer
from phasegpt_ckpt.source.web import RetryPolicy

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Padding: " + b"x" * 10_000 + b"\r\n\r\n"


class TricklingHead:
    """Accepts connections and answers each with ``HEAD`` at one byte every ``every`` seconds."""

    def __init__(self, every: float = 0.05):
        self.every, self.connections = every, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/model.pt"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(client,), daemon=True).start()

    def _trickle(self, client: socket.socket) -> None:
        with client:
            client.recv(65536)
            for byte in HEAD:
                try:
                    client.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(self.every)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def trickler():
    server = TricklingHead()
    yield server
    server.close()


def test_a_download_whose_head_trickles_is_a_timeout_within_the_read_timeout_per_attempt(trickler, tmp_path):
    policy = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.01, read_timeout=1.0, connections=1)
    began = time.monotonic()
    with pytest.raises(MirrorFailed) as failed:
        transfer(Source(label="slow", url=trickler.url), tmp_path / "model.pt.part", expected_size=None,
                 expected_sha256=None, policy=policy)
    seconds = time.monotonic() - began
    assert failed.value.outcome == "timeout" and trickler.connections == 2
    assert seconds < 2 * 1.0 + 2, seconds  # two attempts of one second each, not 10 000 bytes x 0.05 s
    assert not (tmp_path / "model.pt.part").exists()


def test_an_api_call_whose_head_trickles_raises_a_read_timeout(trickler):
    with requests.Session() as session, pytest.raises(requests.exceptions.ReadTimeout):
        web.get(session, trickler.url, label="api", timeout=(1.0, 0.5))


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


def test_a_mirror_no_connection_reaches_is_tried_twice_not_five_times(tmp_path, run_cli):
    """A dead mirror (connection refused) cost five attempts with backoff: a long mirror list took minutes."""
    data = b"x" * 1000
    mirrors = [{"type": "url", "url": f"http://127.0.0.1:{closed_port()}/f.bin"} for _ in range(3)]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "artifacts": {"f": {
        "kind": "dataset", "filename": "f.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "mirrors": mirrors}}}))
    code, out, err = run_cli("--manifest", manifest, "fetch", "f", "--json")
    assert code == 3
    details = [outcome["detail"] for outcome in json.loads(out)[0]["outcomes"]]
    assert len(details) == 3 and all(detail.endswith("(gave up after 2 attempts)") for detail in details), details
