"""Segmented downloads against real loopback servers: several connections, faults per segment, resume.

Every test ends in a verified part (the bytes served, hashed) or a one-line MirrorFailed, never a
wrong file. Files are a few MiB with small segments, so each test takes about a second.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO
from emulators.cdn import CdnServer
from emulators.fileserver import Faults, FileServer

from phasegpt_ckpt.errors import BadInput, MirrorFailed
from phasegpt_ckpt.source.mirrors.base import Source
from phasegpt_ckpt.source.segments import Ranges, boot_id, connection_count, recorded, to_int
from phasegpt_ckpt.source.transfer import RetryPolicy, transfer

PATH = "/files/model.pt"
SIZE = 4 * 2**20
SEGMENTED = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, connect_timeout=2, read_timeout=5,
                        connections=4, min_segment=128 * 1024)


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def server(data):
    with FileServer() as server:
        server.add_file(PATH, data)
        yield server


def fetch(server, part, data, *, sha256=..., policy=SEGMENTED):
    return transfer(Source(label="cdn", url=server.url(PATH)), part, expected_size=len(data),
                    expected_sha256=hashlib.sha256(data).hexdigest() if sha256 is ... else sha256, policy=policy)


def spans(requests) -> list[tuple[int, int]]:
    """(first, last) of each ranged GET."""
    found = [re.fullmatch(r"bytes=(\d+)-(\d*)", r.range or "") for r in requests if r.method == "GET"]
    return [(int(m.group(1)), int(m.group(2) or SIZE - 1)) for m in found if m]


def assert_verified(result, part: Path, data: bytes) -> None:
    assert result.path == part and part.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert not part.with_name(part.name + ".json").exists()


def test_connections_share_the_file_and_every_answer_names_one_object(server, data, tmp_path):
    part = tmp_path / "model.pt.part"
    assert_verified(fetch(server, part, data), part, data)
    gets = server.requests_to(PATH)
    assert len({span for span in spans(gets)}) >= 4 and all(r.status == 206 for r in gets)
    covered = Ranges((first, last + 1) for first, last in spans(gets))
    assert covered.spans == [[0, SIZE]]
    etag = server.files[PATH].etag
    assert all(r.if_range in (None, etag) for r in gets) and any(r.if_range == etag for r in gets)


def test_a_connection_dropped_mid_segment_is_continued_from_where_it_broke(server, data, tmp_path):
    server.set_faults(PATH, Faults(drop_after=100_000, times=1))
    part = tmp_path / "model.pt.part"
    assert_verified(fetch(server, part, data), part, data)
    dropped = server.requests_to(PATH)[0]
    first = int(re.match(r"bytes=(\d+)", dropped.range).group(1))
    assert any(start == first + 100_000 for start, _ in spans(server.requests_to(PATH)[1:]))


def test_a_200_to_a_ranged_request_falls_back_to_one_stream_from_zero(server, data, tmp_path):
    server.set_faults(PATH, Faults(ignore_range=True, times=1))
    part = tmp_path / "model.pt.part"
    assert_verified(fetch(server, part, data), part, data)
    assert server.requests_to(PATH)[-1].range is None  # the one stream, whole and unspliced


def test_a_wrong_content_range_is_never_written(server, data, tmp_path):
    server.set_faults(PATH, Faults(wrong_range_start=1))  # every ranged answer starts at byte 1
    part = tmp_path / "model.pt.part"
    assert_verified(fetch(server, part, data), part, data)
    assert server.requests_to(PATH)[-1].range is None


def test_a_file_changed_between_segments_is_downloaded_whole_not_spliced(server, data, tmp_path):
    changed = os.urandom(SIZE)
    server.set_faults(PATH, Faults(times=1, then_content=changed))  # new content, ETag, Last-Modified
    part = tmp_path / "model.pt.part"
    result = fetch(server, part, changed, sha256=None)  # unpinned: whatever the file is now, whole
    assert_verified(result, part, changed)


def test_a_pinned_file_that_changed_is_one_error_and_no_part(server, data, tmp_path):
    server.set_faults(PATH, Faults(times=1, then_content=os.urandom(SIZE)))
    part = tmp_path / "model.pt.part"
    with pytest.raises(MirrorFailed) as failed:
        fetch(server, part, data)
    assert failed.value.outcome == "hash mismatch" and "\n" not in str(failed.value)
    assert not part.exists()


def test_a_stalled_connection_is_abandoned_and_its_bytes_fetched_again(server, data, tmp_path):
    server.set_faults(PATH, Faults(stall=30, stall_at=50_000, times=1))
    policy = replace(SEGMENTED, speed_limit=100_000, speed_time=0.3)
    part = tmp_path / "model.pt.part"
    assert_verified(fetch(server, part, data, policy=policy), part, data)
    stalled = int(re.match(r"bytes=(\d+)", server.requests_to(PATH)[0].range).group(1))
    assert any(start == stalled + 50_000 for start, _ in spans(server.requests_to(PATH)[1:]))


def test_429_backs_off_that_connection_only(server, data, tmp_path):
    server.set_faults(PATH, Faults(status=429, retry_after=1, times=2))
    part = tmp_path / "model.pt.part"
    assert_verified(fetch(server, part, data), part, data)
    gets = server.requests_to(PATH)
    refused = [r for r in gets if r.status == 429]
    assert len(refused) == 2
    later = [r for r in gets if r.at - refused[-1].at < 0.9 and r not in refused and r.at > refused[-1].at]
    assert later, "the other connections kept going while the refused ones waited"
    assert all(r.range is not None for r in gets)  # no fallback: still segmented


def test_a_server_without_ranges_gets_one_stream(data, tmp_path):
    with FileServer() as server:
        server.add_file(PATH, data, ranges=False)
        part = tmp_path / "model.pt.part"
        assert_verified(fetch(server, part, data), part, data)
        # one connection asks first and the others wait for its answer: one whole answer wasted, not one
        # per connection, then the one stream
        assert [(r.range is None, r.status) for r in server.requests_to(PATH)] == [(False, 200), (True, 200)]


def test_a_trickling_mirror_is_abandoned(data, tmp_path):
    with FileServer() as server:
        server.add_file(PATH, data)
        server.set_faults(PATH, Faults(bytes_per_second=20_000))
        policy = RetryPolicy(attempts=2, backoff=0.01, speed_limit=500_000, speed_time=0.3, connections=1)
        with pytest.raises(MirrorFailed) as failed:
            fetch(server, tmp_path / "model.pt.part", data, policy=policy)
        assert failed.value.outcome == "too slow" and "B/s floor" in str(failed.value)


@pytest.mark.parametrize("connections", [1, 4])
def test_a_mirror_is_given_a_time_budget(data, tmp_path, connections):
    with FileServer() as server:
        server.add_file(PATH, data)
        server.set_faults(PATH, Faults(bytes_per_second=400_000))
        policy = replace(SEGMENTED, budget=0.5, connections=connections)
        with pytest.raises(MirrorFailed) as failed:
            fetch(server, tmp_path / "model.pt.part", data, policy=policy)
        assert failed.value.outcome == "timeout"


def test_limit_rate_caps_all_connections_together(server, data, tmp_path):
    rate = 8 * 2**20  # 4 MiB at 8 MiB/s: half a second at least, whatever the connections could do
    policy = replace(SEGMENTED, limit_rate=rate)
    part = tmp_path / "model.pt.part"
    began = time.monotonic()
    assert_verified(fetch(server, part, data, policy=policy), part, data)
    assert time.monotonic() - began >= SIZE / rate * 0.9


def test_planted_symlinks_are_replaced_never_followed(server, data, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim, record = outside / "precious", outside / "record"
    victim.write_bytes(b"keep me")
    record.write_text("{}")
    part = tmp_path / "cache" / "model.pt.part"
    part.parent.mkdir()
    part.symlink_to(victim)
    part.with_name(part.name + ".json").symlink_to(record)
    for policy in (SEGMENTED, RetryPolicy(connections=1)):
        assert_verified(fetch(server, part, data, policy=policy), part, data)
        assert not part.is_symlink()
        assert victim.read_bytes() == b"keep me" and record.read_text() == "{}"
        part.unlink()
        part.symlink_to(victim)
        part.with_name(part.name + ".json").symlink_to(record)


def test_the_connection_count_follows_the_size_and_the_environment(monkeypatch):
    assert [connection_count(size, None) for size in (None, 2**20, 7 * 2**20, 16 * 2**20, 10**12)] == [1, 1, 1, 4, 16]
    assert connection_count(2**30, 99) == 16 and connection_count(None, 8) == 1
    monkeypatch.setenv("PHASEGPT_CONNECTIONS", "3")
    assert connection_count(2**30, None) == 3
    monkeypatch.setenv("PHASEGPT_CONNECTIONS", "lots")
    with pytest.raises(BadInput, match="PHASEGPT_CONNECTIONS"):
        connection_count(2**30, None)


def test_a_5000_digit_content_length_is_not_a_size():
    assert to_int("9" * 5000) is None and to_int("12") == 12


def test_the_cdn_emulator_path_gives_a_verified_file(tmp_path):
    """The benchmark's throttled CDN, end to end (its figures are in benchmarks/transfer.py)."""
    source = tmp_path / "blob.bin"
    blob = os.urandom(2 * 2**20)
    source.write_bytes(blob)
    with CdnServer(source, per_connection=20e6, rtt=0.01) as cdn:
        part = tmp_path / "out.part"
        result = transfer(Source(label="cdn", url=cdn.url()), part, expected_size=len(blob),
                          expected_sha256=hashlib.sha256(blob).hexdigest(), policy=SEGMENTED)
        assert_verified(result, part, blob)
        assert len(cdn.ranges) >= 4 and len(blob) <= cdn.sent <= 1.15 * len(blob)  # a stolen tail overlaps a little


# -- kill -9 in the middle, then a rerun -----------------------------------------------------------

KILLED = """
import sys
from pathlib import Path
from phasegpt_ckpt.source.mirrors.base import Source
from phasegpt_ckpt.source.transfer import RetryPolicy, transfer
transfer(Source(label="big", url=sys.argv[1]), Path(sys.argv[2]), expected_size=int(sys.argv[3]),
         expected_sha256=sys.argv[4], policy=RetryPolicy(connections=4, min_segment=128 * 1024))
"""


@pytest.mark.parametrize("seed, signum", [(1, signal.SIGKILL), (2, signal.SIGKILL), (2, signal.SIGINT)],
                         ids=["kill-9-early", "kill-9-later", "ctrl-c"])
def test_after_kill_9_a_rerun_asks_only_for_the_missing_ranges(server, data, tmp_path, seed, signum):
    server.set_faults(PATH, Faults(bytes_per_second=250_000))  # per connection: 4 s for the file
    part, sidecar = tmp_path / "model.pt.part", tmp_path / "model.pt.part.json"
    sha256 = hashlib.sha256(data).hexdigest()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILLED, server.url(PATH), str(part), str(SIZE), sha256], env=env)
    try:
        deadline = time.monotonic() + 20
        want = SIZE * seed // 5  # kill at a different moment for each seed
        while time.monotonic() < deadline and _recorded(sidecar) < want:
            time.sleep(0.02)
        time.sleep(0.05 * seed)
        child.send_signal(signum)
    finally:
        child.wait()
    record = json.loads(sidecar.read_text())
    kept = Ranges(tuple(span) for span in record["written"])  # this boot: what was written, synced or not
    synced = Ranges(tuple(span) for span in record["ranges"])
    assert kept.covered() >= want and Ranges(kept.spans + synced.spans).spans == kept.spans
    assert all(part.read_bytes()[a:b] == data[a:b] for a, b in kept.spans)
    before = len(server.log)
    server.set_faults(PATH, None)
    assert_verified(fetch(server, part, data), part, data)
    asked = Ranges((first, last + 1) for first, last in spans(server.log[before:]))
    assert Ranges(kept.spans + asked.spans).spans == [[0, SIZE]]
    assert all(a >= end or b <= start for a, b in asked.spans for start, end in kept.spans), (asked.spans, kept.spans)


def _recorded(sidecar: Path) -> int:
    try:
        return Ranges(tuple(span) for span in json.loads(sidecar.read_text()).get("written", [])).covered()
    except (OSError, ValueError):
        return 0


def test_a_record_from_before_a_restart_vouches_only_for_synced_bytes():
    """After a reboot the page cache is gone: bytes written but never synced may be zeros on disk."""
    record = {"ranges": [[0, 100]], "written": [[0, 300], [400, 500]], "boot_id": boot_id()}
    assert recorded(record, 1000, 1000).spans == [[0, 300], [400, 500]]
    assert recorded({**record, "boot_id": "another-boot"}, 1000, 1000).spans == [[0, 100]]
    assert recorded({**record, "boot_id": None}, 1000, 1000).spans == [[0, 100]]


def test_fetch_connections_limit_rate_and_mirror_order_options_reach_the_download(server, data, tmp_path, run_cli):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "version: 1\ndefault: blob\nartifacts:\n  blob:\n    kind: dataset\n    filename: blob.bin\n"
        f"    size: {SIZE}\n    sha256: {hashlib.sha256(data).hexdigest()}\n"
        f"    mirrors:\n      - {{type: url, url: \"{server.url(PATH)}\"}}\n")
    code, out, err = run_cli("--manifest", manifest, "--cache-dir", tmp_path / "cache", "fetch", "--connections", "3",
                             "--limit-rate", "100000000", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert len([r for r in server.requests_to(PATH) if r.range]) >= 3
    code, _, err = run_cli("--manifest", manifest, "--cache-dir", tmp_path / "cache", "fetch", "--connections", "0")
    assert code == 2 and "--connections" in err
    code, _, err = run_cli("--manifest", manifest, "--cache-dir", tmp_path / "cache", "fetch", "--mirror-order", "dice")
    assert code == 2 and "mirror order" in err and len(err.strip().splitlines()) == 1


def test_a_pinned_part_left_by_one_mirror_is_finished_by_another(data, tmp_path):
    with FileServer() as first, FileServer() as second:
        for server in (first, second):
            server.add_file(PATH, data)
        first.set_faults(PATH, Faults(drop_after=300_000))  # every connection breaks, then gives up
        part = tmp_path / "model.pt.part"
        with pytest.raises(MirrorFailed):
            fetch(first, part, data, policy=replace(SEGMENTED, attempts=1))
        record = json.loads(part.with_name(part.name + ".json").read_text())
        kept = Ranges(tuple(span) for span in record["ranges"])
        assert kept.covered() >= 4 * 300_000 - 4 * 65536  # what each connection wrote before the cut
        assert_verified(fetch(second, part, data), part, data)
        asked = Ranges((first_byte, last + 1) for first_byte, last in spans(second.requests_to(PATH)))
        assert asked.covered() == SIZE - kept.covered()
        assert all(r.if_range is None or r.if_range == second.files[PATH].etag for r in second.requests_to(PATH))


def test_fetch_finishes_a_pinned_part_from_the_next_mirror_asking_only_for_the_rest(data, tmp_path):
    from phasegpt_ckpt import Store
    from phasegpt_ckpt.source.manifest import Manifest

    with FileServer() as first, FileServer() as second:
        for server in (first, second):
            server.add_file(PATH, data)
        first.set_faults(PATH, Faults(drop_after=300_000))
        manifest = Manifest.model_validate({"version": 1, "artifacts": {"blob": {
            "kind": "dataset", "filename": "blob.bin", "size": SIZE, "sha256": hashlib.sha256(data).hexdigest(),
            "mirrors": [{"type": "url", "url": server.url(PATH)} for server in (first, second)]}}})
        fetched = Store(manifest, tmp_path / "cache").fetch("blob", policy=replace(SEGMENTED, attempts=1))
        assert Path(fetched.path).read_bytes() == data
        served_first = Ranges((a, b + 1) for a, b in spans(first.requests_to(PATH)))
        asked_second = Ranges((a, b + 1) for a, b in spans(second.requests_to(PATH)))
        assert 0 < asked_second.covered() < SIZE - 4 * 200_000  # the first mirror's bytes were kept
        assert [o.status for o in fetched.outcomes][-1] == "ok" and served_first.covered() > 0


# -- several mirrors at once -----------------------------------------------------------------------


def fetch_from_both(first, second, data, tmp_path, policy=SEGMENTED, progress=None):
    from phasegpt_ckpt import Store
    from phasegpt_ckpt.source.manifest import Manifest

    manifest = Manifest.model_validate({"version": 1, "artifacts": {"blob": {
        "kind": "dataset", "filename": "blob.bin", "size": SIZE, "sha256": hashlib.sha256(data).hexdigest(),
        "mirrors": [{"type": "url", "url": server.url(PATH)} for server in (first, second)]}}})
    return Store(manifest, tmp_path / "cache", progress=progress).fetch("blob", policy=policy)


def test_a_pinned_file_comes_from_every_mirror_at_once(data, tmp_path):
    with FileServer() as first, FileServer() as second:
        for server in (first, second):
            server.add_file(PATH, data)
            server.set_faults(PATH, Faults(bytes_per_second=1_000_000))  # long enough for the bar to be drawn
        details = []
        fetched = fetch_from_both(first, second, data, tmp_path,
                                  progress=lambda task, done, total, unit="B", detail="": details.append(detail))
        assert Path(fetched.path).read_bytes() == data
        assert any(re.fullmatch(r"[1-8] connections?, 2 mirrors", d) for d in details), details  # beside the speed
        assert all(spans(server.requests_to(PATH)) for server in (first, second))
        assert [o.status for o in fetched.outcomes] == ["ok", "ok"]
        assert sum(o.bytes_moved for o in fetched.outcomes) == SIZE and all(o.mb_per_s > 0 for o in fetched.outcomes)


def test_mirrors_on_one_host_share_its_connection_cap(data, tmp_path):
    with FileServer() as first, FileServer() as second:  # two mirrors, one host: 127.0.0.1
        for server in (first, second):
            server.add_file(PATH, data)
            server.set_faults(PATH, Faults(stall=0.4))  # no connection asks twice within 0.4 s
        fetch_from_both(first, second, data, tmp_path, policy=replace(SEGMENTED, connections=16))
        # the most requests one mirror saw within 0.3 s: one per connection open to it at once
        opened = [max(sum(0 <= other.at - request.at < 0.3 for other in server.requests_to(PATH))
                      for request in server.requests_to(PATH)) for server in (first, second)]
        # 16 to the host, not 16 to each mirror: never more than 8 at once to either (the first answers
        # arrive 0.4 s after the first requests, so how many start together varies by one or two)
        assert max(opened) <= 8 and sum(opened) >= 12, opened


def test_a_failing_mirror_loses_its_segments_to_the_other(data, tmp_path):
    with FileServer() as first, FileServer() as second:
        for server in (first, second):
            server.add_file(PATH, data)
        second.set_faults(PATH, Faults(status=404))
        fetched = fetch_from_both(first, second, data, tmp_path)
        assert Path(fetched.path).read_bytes() == data
        assert [(o.status, o.bytes_moved) for o in fetched.outcomes] == [("ok", SIZE), ("404", None)]


def test_the_mirror_that_served_bad_bytes_is_found_and_the_file_finished_from_the_good_one(data, tmp_path):
    with FileServer() as first, FileServer() as second:
        for server in (first, second):
            server.add_file(PATH, data)
        first.set_faults(PATH, Faults(corrupt=True, times=2))  # two answers with 16 wrong bytes each
        fetched = fetch_from_both(first, second, data, tmp_path)
        assert Path(fetched.path).read_bytes() == data
        statuses = {o.mirror: o.status for o in fetched.outcomes}
        assert statuses == {f"url {first.url(PATH)}": "corrupt bytes", f"url {second.url(PATH)}": "ok"}, statuses


@pytest.mark.parametrize("where", ["option", "manifest"])
def test_mirror_order_fastest_starts_with_the_quicker_mirror(tmp_path, where):
    corpus = os.urandom(2**20)  # one connection, one mirror at a time
    from phasegpt_ckpt import Store
    from phasegpt_ckpt.source.manifest import Manifest

    with FileServer() as slow, FileServer() as fast:
        for server in (slow, fast):
            server.add_file(PATH, corpus)
        slow.set_faults(PATH, Faults(stall=0.3))  # every answer a round trip late
        entry = {"kind": "dataset", "filename": "input.txt", "size": len(corpus),
                 "sha256": hashlib.sha256(corpus).hexdigest(),
                 "mirrors": [{"type": "url", "url": server.url(PATH)} for server in (slow, fast)]}
        if where == "manifest":
            entry["mirror_order"] = "fastest"
        store = Store(Manifest.model_validate({"version": 1, "artifacts": {"corpus": entry}}), tmp_path / "cache")
        fetched = store.fetch("corpus", mirror_order="fastest" if where == "option" else None)
        assert Path(fetched.path).read_bytes() == corpus
        assert [o.mirror for o in fetched.outcomes] == [f"url {fast.url(PATH)}"]
        assert [r.range for r in slow.requests_to(PATH)] == [f"bytes=0-{256 * 1024 - 1}"]  # the probe only
        assert fetched.outcomes[0].mb_per_s > 0
