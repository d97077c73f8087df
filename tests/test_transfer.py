"""The transfer engine against a real loopback server with switchable faults.

Every fault must end in a verified part or a clear error, never in a wrong complete file. The
payload is the real tiny Shakespeare corpus; its sha256 is the one conftest pins.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CORPUS_SHA256, REPO
from emulators.fileserver import Faults, FileServer
from full_disk import FullDisk
from phasegpt_ckpt.errors import BadInput, MirrorFailed, PhasegptError
from phasegpt_ckpt.source.mirrors.base import Source
from phasegpt_ckpt.proof.digest import hash_file
from phasegpt_ckpt.source.transfer import RetryPolicy, transfer
from phasegpt_ckpt.source.web import check_url_allowed

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, connect_timeout=2, read_timeout=0.5)
ONCE = RetryPolicy(attempts=1, connect_timeout=2, read_timeout=0.5)
PATH = "/files/input.txt"


@pytest.fixture(scope="module")
def corpus(corpus_path) -> bytes:
    return corpus_path.read_bytes()


@pytest.fixture
def server(corpus):
    with FileServer() as server:
        server.add_file(PATH, corpus, content_type="text/plain")
        yield server


def fetch(server, part, data, *, path=PATH, sha256=..., size=..., policy=FAST, **kwargs):
    """transfer() of ``path`` expecting ``data`` (size/sha256 overridable, None = unknown)."""
    return transfer(
        Source(label="corpus", url=server.url(path), headers=kwargs.pop("headers", {})),
        part,
        expected_size=len(data) if size is ... else size,
        expected_sha256=hashlib.sha256(data).hexdigest() if sha256 is ... else sha256,
        policy=policy,
        **kwargs,
    )


def interrupted(server, part, data, at: int, **kwargs) -> dict:
    """A run that loses its connection after ``at`` bytes and gives up, leaving a resumable part."""
    server.set_faults(PATH, Faults(drop_after=at, times=1))
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, part, data, policy=ONCE, **kwargs)
    assert failed.value.outcome == "connection error"
    assert part.stat().st_size == at
    return json.loads(sidecar(part).read_text())


def sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def assert_verified(result, part, data):
    assert result.path == part and part.read_bytes() == data
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert not sidecar(part).exists()


def test_download_is_hashed_and_asks_for_identity(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    result = fetch(server, part, corpus, want_md5=True)
    assert_verified(result, part, corpus)
    assert result.sha256 == CORPUS_SHA256 and result.md5 == hashlib.md5(corpus).hexdigest()
    (get,) = server.requests_to(PATH)
    assert get.accept_encoding == "identity" and get.range is None


def test_dropped_connection_resumes_with_range_and_if_range(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    server.set_faults(PATH, Faults(drop_after=300_000, times=1))
    result = fetch(server, part, corpus)
    assert_verified(result, part, corpus)
    first, second = server.requests_to(PATH)
    assert second.range == "bytes=300000-" and second.if_range == server.files[PATH].etag
    assert second.status == 206


def test_resume_across_runs_without_etag_uses_last_modified(server, corpus, tmp_path):
    """WaterButler sends no ETag: If-Range falls back to the date; a weak ETag is never sent."""
    server.add_file(PATH, corpus, etag='W/"weak"')
    part = tmp_path / "input.txt.part"
    assert interrupted(server, part, corpus, 200_000)["etag"] is None
    result = fetch(server, part, corpus)
    assert_verified(result, part, corpus)
    last = server.requests_to(PATH)[-1]
    assert last.range == "bytes=200000-" and last.if_range == server.files[PATH].last_modified


def test_ignored_range_restarts_cleanly(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    interrupted(server, part, corpus, 400_000)
    server.set_faults(PATH, Faults(ignore_range=True))
    assert_verified(fetch(server, part, corpus), part, corpus)
    last = server.requests_to(PATH)[-1]
    assert last.range == "bytes=400000-" and last.status == 200


def test_wrong_content_range_start_restarts_from_zero(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    interrupted(server, part, corpus, 400_000)
    server.set_faults(PATH, Faults(wrong_range_start=1000, times=1))
    assert_verified(fetch(server, part, corpus), part, corpus)
    wrong, clean = server.requests_to(PATH)[-2:]
    assert wrong.range == "bytes=400000-" and wrong.status == 206
    assert clean.range is None and clean.status == 200


@pytest.mark.parametrize("etag", [True, None], ids=["etag", "last-modified"])
def test_changed_file_between_attempts_is_downloaded_whole(server, corpus, tmp_path, etag):
    """If-Range with the old validator gets the new file in full (200), never a splice of both."""
    new = corpus[::-1]
    blob = server.add_file(PATH, corpus, etag=etag)
    old_validator = blob.etag or blob.last_modified
    server.set_faults(PATH, Faults(drop_after=500_000, times=1, then_content=new))
    part = tmp_path / "input.txt.part"
    assert_verified(fetch(server, part, new), part, new)
    resumed = server.requests_to(PATH)[-1]
    assert resumed.if_range == old_validator and resumed.range == "bytes=500000-" and resumed.status == 200


def test_stall_past_read_timeout_is_retried(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    server.set_faults(PATH, Faults(stall=2, stall_at=100_000, times=1))
    assert_verified(fetch(server, part, corpus), part, corpus)
    assert len(server.requests_to(PATH)) == 2


def test_server_that_never_answers_times_out(server, corpus, tmp_path):
    server.set_faults(PATH, Faults(stall=2))
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, tmp_path / "x.part", corpus, policy=RetryPolicy(attempts=2, backoff=0.01, read_timeout=0.3))
    assert failed.value.outcome == "timeout"
    assert not (tmp_path / "x.part").exists()


def test_500_then_200(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    server.set_faults(PATH, Faults(status=500, times=1))
    assert_verified(fetch(server, part, corpus), part, corpus)
    assert [r.status for r in server.requests_to(PATH)] == [500, 200]


def test_persistent_503_gives_up_after_capped_attempts(server, corpus, tmp_path):
    faults = server.set_faults(PATH, Faults(status=503))
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, tmp_path / "x.part", corpus)
    assert failed.value.outcome == "http 503" and faults.attempts == FAST.attempts


def test_429_retry_after_is_honoured(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    server.set_faults(PATH, Faults(status=429, retry_after=1, times=1))
    assert_verified(fetch(server, part, corpus), part, corpus)
    refused, served = server.requests_to(PATH)
    assert refused.status == 429 and served.at - refused.at >= 1.0  # FAST alone would wait < 0.05 s


@pytest.mark.parametrize(
    "faults, outcome",
    [
        (Faults(corrupt=True), "hash mismatch"),
        (Faults(extra_bytes=100), "too long"),
        (Faults(endless=True), "too long"),
        (Faults(html_page="<!DOCTYPE html><title>Sign in</title>"), "html page"),
    ],
    ids=["corrupt", "extra-bytes", "endless", "html-page"],
)
def test_bad_bytes_are_rejected_and_discarded(server, corpus, tmp_path, faults, outcome):
    part = tmp_path / "input.txt.part"
    server.set_faults(PATH, faults)
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, part, corpus)
    assert failed.value.outcome == outcome
    assert not part.exists() and not sidecar(part).exists()


def test_extra_bytes_with_unknown_size_fail_the_hash(server, corpus, tmp_path):
    server.set_faults(PATH, Faults(extra_bytes=100))
    with pytest.raises(MirrorFailed, match="expected sha256") as failed:
        fetch(server, tmp_path / "x.part", corpus, size=None)
    assert failed.value.outcome == "hash mismatch"


def test_html_body_behind_a_binary_content_type_is_rejected(server, tmp_path):
    page = b"\n  <!DOCTYPE html><html><body>quota exceeded</body></html>"
    server.add_file("/page", page)  # application/octet-stream
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, tmp_path / "x.part", page, path="/page", sha256=None)
    assert failed.value.outcome == "html page"


def test_complete_part_gets_416_and_verifies(server, corpus, tmp_path):
    """A run killed after its last byte: the next one asks for bytes=L-, gets 416 */L, verifies."""
    part = tmp_path / "input.txt.part"
    interrupted(server, part, corpus, 100_000, size=None)
    part.write_bytes(corpus)  # the rest arrived, then the process died before verifying
    result = fetch(server, part, corpus, size=None)
    assert_verified(result, part, corpus)
    last = server.requests_to(PATH)[-1]
    assert last.range == f"bytes={len(corpus)}-" and last.status == 416


def test_complete_part_of_known_size_needs_no_request(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    interrupted(server, part, corpus, 100_000)
    part.write_bytes(corpus)
    before = len(server.log)
    assert_verified(fetch(server, part, corpus), part, corpus)
    assert len(server.log) == before


def test_part_for_another_download_is_not_resumed(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    interrupted(server, part, corpus, 100_000)
    other = corpus[:500_000]
    server.add_file("/other", other)
    assert_verified(fetch(server, part, other, path="/other"), part, other)
    assert server.requests_to("/other")[0].range is None


def test_part_longer_than_the_file_is_discarded(server, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    interrupted(server, part, corpus, 100_000)
    part.write_bytes(corpus + b"tail")
    assert_verified(fetch(server, part, corpus), part, corpus)
    assert server.requests_to(PATH)[-1].range is None


def test_credentials_stay_with_their_origin(corpus, tmp_path):
    """A redirect to another port drops every credential header; one on the same origin keeps them."""
    secrets = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y"}
    with FileServer() as hub, FileServer() as cdn:
        cdn.add_file(PATH, corpus)
        hub.route("/same", lambda request: request.redirect("/cross"))
        hub.route("/cross", lambda request: request.redirect(cdn.url(PATH), 307))
        part = tmp_path / "input.txt.part"
        assert_verified(fetch(hub, part, corpus, path="/same", headers=secrets), part, corpus)
        for request in hub.log:
            assert (request.authorization, request.headers.get("X-Api-Key")) == ("Bearer s3cret", "k3y")
        (download,) = cdn.requests_to(PATH)
        assert download.authorization is None and "X-Api-Key" not in download.headers
        assert download.accept_encoding == "identity"


def test_redirect_to_plain_http_elsewhere_is_refused(server, corpus, tmp_path):
    server.route("/away", lambda request: request.redirect("http://example.org/input.txt"))
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, tmp_path / "x.part", corpus, path="/away")
    assert failed.value.outcome == "insecure redirect"


def test_redirect_loop_fails(server, corpus, tmp_path):
    server.set_faults(PATH, Faults(redirect_loop=True))
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, tmp_path / "x.part", corpus)
    assert failed.value.outcome == "redirect loop"


@pytest.mark.parametrize("status, outcome", [(401, "401"), (403, "403"), (404, "404"), (410, "http 410")])
def test_client_errors_fail_at_once(server, corpus, tmp_path, status, outcome):
    faults = server.set_faults(PATH, Faults(status=status))
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, tmp_path / "x.part", corpus)
    assert failed.value.outcome == outcome and faults.attempts == 1
    assert not (tmp_path / "x.part").exists()


def test_plain_http_beyond_loopback_is_refused(tmp_path):
    for url in ("http://127.0.0.1:9/x", "http://[::1]:9/x", "http://localhost/x", "https://example.org/x"):
        check_url_allowed(url)
    for url in ("http://example.org/x", "http://10.0.0.1/x", "ftp://127.0.0.1/x", "file:///etc/passwd"):
        with pytest.raises(BadInput):
            check_url_allowed(url)
    with pytest.raises(BadInput, match="plain http"):
        transfer(Source(label="x", url="http://example.org/x"), tmp_path / "x.part", expected_size=None,
                 expected_sha256=None)
    assert not (tmp_path / "x.part").exists()


def test_local_path_is_copied_and_hashed(corpus_path, corpus, tmp_path):
    part = tmp_path / "input.txt.part"
    result = transfer(Source(label="local", local_path=corpus_path), part, expected_size=len(corpus),
                      expected_sha256=CORPUS_SHA256)
    assert_verified(result, part, corpus)
    with pytest.raises(MirrorFailed) as failed:
        transfer(Source(label="local", local_path=tmp_path / "nope"), part, expected_size=None, expected_sha256=None)
    assert failed.value.outcome == "missing"


def test_disk_full_is_one_clear_error(server, corpus, tmp_path):
    disk = FullDisk(tmp_path)
    disk.fill(leave=len(corpus) // 2)
    try:
        with pytest.raises(PhasegptError, match="disk full"):
            fetch(server, disk.root / "input.txt.part", corpus)
    finally:
        disk.close()


def test_hash_file_matches_hashlib(corpus_path, corpus):
    facts = hash_file(corpus_path)
    assert (facts.size, facts.sha256) == (len(corpus), CORPUS_SHA256)


# -- process deaths ------------------------------------------------------------------------------

TRANSFER_SCRIPT = """
import sys
from pathlib import Path
from phasegpt_ckpt.source.mirrors.base import Source
from phasegpt_ckpt.source.transfer import transfer
transfer(Source(label="big", url=sys.argv[1]), Path(sys.argv[2]), expected_size=int(sys.argv[3]),
         expected_sha256=sys.argv[4])
"""


def start_transfer(url: str, part: Path, data: bytes) -> subprocess.Popen:
    command = [sys.executable, "-c", TRANSFER_SCRIPT, url, str(part), str(len(data)), hashlib.sha256(data).hexdigest()]
    return subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE)


def wait_for_bytes(part: Path, at_least: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size >= at_least):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the transfer never got going"
        time.sleep(0.02)


@pytest.fixture
def slow_server(corpus):
    """4 copies of the corpus (4.5 MB) served at 4 MB/s: a transfer takes about a second."""
    data = corpus * 4
    with FileServer() as server:
        server.add_file(PATH, data)
        server.set_faults(PATH, Faults(bytes_per_second=4e6))
        yield server, data


def test_sigkill_mid_transfer_then_resume_asks_only_for_the_rest(slow_server, tmp_path):
    server, data = slow_server
    part = tmp_path / "big.part"
    victim = start_transfer(server.url(PATH), part, data)
    wait_for_bytes(part, 1, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    left = part.stat().st_size
    assert 0 < left < len(data)
    again = start_transfer(server.url(PATH), part, data)
    assert again.wait(timeout=30) == 0, again.stderr.read().decode()
    assert part.read_bytes() == data and not sidecar(part).exists()
    assert server.requests_to(PATH)[-1].range == f"bytes={left}-"


def test_ctrl_c_leaves_part_and_sidecar_consistent(slow_server, tmp_path):
    server, data = slow_server
    part = tmp_path / "big.part"
    victim = start_transfer(server.url(PATH), part, data)
    wait_for_bytes(part, 1, victim)
    victim.send_signal(signal.SIGINT)
    assert victim.wait(timeout=10) != 0
    assert b"KeyboardInterrupt" in victim.stderr.read()
    state = json.loads(sidecar(part).read_text())
    assert 0 < state["bytes"] == part.stat().st_size < len(data)
    assert state["etag"] == server.files[PATH].etag
    assert data.startswith(part.read_bytes())
