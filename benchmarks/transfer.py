"""Verified download and verify speed, whole processes: our fetch and verify against curl, hashlib and sha256sum.

Run from the repository root:  python benchmarks/transfer.py [--size-mib 1024] [--repeat 3]

One run, whole processes as a user runs them, over the same 1 GiB of random bytes in a temp dir:
  download  curl -s -o                      bytes only, no hash
            phasegpt-ckpt fetch NAME        a temporary manifest with one `url` mirror and the sha256
            transfer() in python -c         the engine alone, without the CLI's start-up
  hash      python -c hashlib.file_digest   SHA-256 of the file, one core: the anchor
            python -c hash_file             the function `verify` hashes with
            phasegpt-ckpt verify FILE       the whole command on a path, exactly as a user types it:
                                            the shipped manifest, an empty cache ($PHASEGPT_CACHE), and
                                            a file no artifact describes (random bytes: no checkpoint,
                                            so exit 0 or 1 is its verdict, and either is timed)
            verify FILE (an artifact's copy) the same path, with the temporary manifest that lists it
            phasegpt-ckpt verify NAME       the whole command on an artifact in a cache (a dataset)
            sha256sum
  start-up  the same commands (and bare python) on no bytes: `verify FILE` of a 1 KiB file,
            `fetch NAME` answered from the cache, `--help`; and the imports the python -c rows pay.
The file is served from loopback by a separate process that uses sendfile(2), so the server is
never the bottleneck (check: curl's figure). A verified download cannot beat the slower of curl
and hashlib. The targets: fetch >= 0.8 x min(curl, hashlib); hash_file and the whole
`phasegpt-ckpt verify FILE` >= 0.9 x hashlib.file_digest. `phasegpt-ckpt` is the console script
beside this Python (else `python -m phasegpt_ckpt`). Each figure is the best of --repeat runs taken
round-robin (the machine is shared); the median is shown beside it. Python start-up and imports count
against us: in brackets, each ratio with our start-up beyond bare python's subtracted, and the
start-up each target leaves room for.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def serve(path: str) -> None:
    """A minimal HTTP/1.1 file server: headers, then sendfile(2) straight from the page cache."""
    size = os.path.getsize(path)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as file, contextlib.suppress(ConnectionError):  # a client that hung up
                self.connection.sendfile(file)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def timed(command: list[str], env: dict, verdicts: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Wall seconds and exit status of one whole process; it must end with one of ``verdicts``."""
    start = time.perf_counter()
    process = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - start
    if process.returncode not in verdicts:
        sys.stderr.write(process.stderr)
        raise subprocess.CalledProcessError(process.returncode, command)
    return seconds, process.returncode


def all_times(commands: dict[str, tuple], repeat: int, clear) -> tuple[dict[str, list[float]], dict[str, set[int]]]:
    """``repeat`` runs of each (command, environment[, exit statuses that are verdicts rather than
    failures]), taken round-robin so that load from other users of the machine spreads over all of
    them; ``clear()`` removes outputs before each. The times and the exit statuses seen, by name."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    statuses: dict[str, set[int]] = {name: set() for name in commands}
    for _ in range(repeat):
        for name, (command, env, *verdicts) in commands.items():
            clear()
            seconds, status = timed(command, env, *verdicts)
            times[name].append(seconds)
            statuses[name].add(status)
    return times, statuses


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for offset in range(0, size, 64 * 2**20):
            block = os.urandom(min(64 * 2**20, size - offset))
            file.write(block)
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: Path, url: str, size: int, sha256: str, *more_urls: str) -> None:
    """One pinned artifact ``blob`` with a `url` mirror for ``url`` and each of ``more_urls``, in that order."""
    mirrors = "".join(f"      - {{type: url, url: \"{each}\"}}\n" for each in (url, *more_urls))
    path.write_text(
        "version: 1\ndefault: blob\nartifacts:\n  blob:\n    kind: dataset\n    filename: blob.bin\n"
        f"    size: {size}\n    sha256: {sha256}\n    mirrors:\n{mirrors}"
    )


TRANSFER = (
    "import sys; from pathlib import Path; from phasegpt_ckpt.source.mirrors.base import Source; "
    "from phasegpt_ckpt.source.transfer import transfer; "
    "transfer(Source(label='bench', url=sys.argv[1]), Path(sys.argv[2]), "
    "expected_size=int(sys.argv[3]), expected_sha256=sys.argv[4])"
)
FILE_DIGEST = "import hashlib, sys; print(hashlib.file_digest(open(sys.argv[1], 'rb'), 'sha256').hexdigest())"
HASH_FILE = "import sys; from phasegpt_ckpt.proof.digest import hash_file; print(hash_file(sys.argv[1]))"
# `verify FILE` of random bytes no artifact describes: whether such a file passes (0) or fails as "no
# checkpoint" (1) is the command's verdict; the bytes are hashed either way. 2 (bad input) is a failure.
VERDICTS = (0, 1)


def console_script() -> list[str]:
    """The console script as a user runs it: the one installed beside this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("phasegpt-ckpt")
    return [str(script)] if script.is_file() else [PYTHON, "-m", "phasegpt_ckpt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cdn-mib", type=int, default=256, help="the throttled-CDN comparison's file (0: skip it)")
    args = parser.parse_args()
    size = args.size_mib * 2**20
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ckpt = console_script()

    with tempfile.TemporaryDirectory(prefix="phasegpt-bench-") as tmp:
        work = Path(tmp)
        source, out, cache = work / "blob.bin", work / "out.bin", work / "cache"
        sha256 = make_file(source, size)
        small = work / "small.bin"  # what `verify FILE` costs with (almost) no bytes to hash
        small.write_bytes(os.urandom(1024))
        # `verify FILE` as a user types it, on the shipped manifest, but with a cache (empty) and a user
        # manifest (none) of its own rather than this machine's; the settings a user may have exported are left out
        user = {k: v for k, v in env.items() if k not in ("PHASEGPT_MANIFEST", "PHASEGPT_OFFLINE")}
        user.update(PHASEGPT_CACHE=str(work / "user-cache"), PHASEGPT_USER_MANIFEST=str(work / "no-user-manifest.yaml"))
        server = subprocess.Popen([PYTHON, __file__, "--serve", str(source)], stdout=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{server.stdout.readline().strip()}/blob.bin"
            manifest = work / "manifest.yaml"
            write_manifest(manifest, url, size, sha256)

            def clear():
                out.unlink(missing_ok=True)
                out.with_name(out.name + ".json").unlink(missing_ok=True)
                shutil.rmtree(cache, ignore_errors=True)

            fetch = [*ckpt, "--quiet", "--manifest", str(manifest), "--cache-dir", str(cache), "fetch", "blob"]
            verified = work / "verified"  # a cache holding the blob, for `verify NAME` to re-hash
            subprocess.run([*ckpt, "--quiet", "--manifest", str(manifest), "--cache-dir", str(verified), "import",
                            "blob", str(source)], check=True, stdout=subprocess.DEVNULL, env=env)
            in_cache = [*ckpt, "--quiet", "--manifest", str(manifest), "--cache-dir", str(verified)]
            runs, statuses = all_times({
                "curl -s -o": (["curl", "-s", "-o", str(out), url], env),
                "phasegpt-ckpt fetch": (fetch, env),
                "transfer() in python -c": ([PYTHON, "-c", TRANSFER, url, str(out), str(size), sha256], env),
                "hashlib.file_digest": ([PYTHON, "-c", FILE_DIGEST, str(source)], env),
                "hash_file (verify)": ([PYTHON, "-c", HASH_FILE, str(source)], env),
                "phasegpt-ckpt verify FILE": ([*ckpt, "verify", str(source)], user, VERDICTS),
                "verify FILE (an artifact's copy)": ([*ckpt, "--manifest", str(manifest), "verify", str(source)], user),
                "phasegpt-ckpt verify NAME": ([*in_cache, "verify", "blob"], env),
                "sha256sum": (["sha256sum", str(source)], env),
                "start-up: python -c pass": ([PYTHON, "-c", "pass"], env),
                "start-up: import digest": ([PYTHON, "-c", "import phasegpt_ckpt.proof.digest"], env),
                "start-up: import transfer, mirrors": ([PYTHON, "-c", "import phasegpt_ckpt.source.mirrors.base, "
                                                        "phasegpt_ckpt.source.transfer"], env),
                "start-up: phasegpt-ckpt --help": ([*ckpt, "--help"], env),
                "start-up: verify FILE (1 KiB)": ([*ckpt, "verify", str(small)], user, VERDICTS),
                "start-up: fetch NAME (cached)": ([*in_cache, "fetch", "blob"], env),
            }, args.repeat, clear)
            clear()
        finally:
            server.terminate()
            server.wait()

    seconds = {name: min(times) for name, times in runs.items()}
    medians = {name: statistics.median(times) for name, times in runs.items()}
    print(f"{args.size_mib} MiB, best of {args.repeat} (median beside it), whole processes; `phasegpt-ckpt` is "
          f"{' '.join(Path(part).name for part in ckpt)}")
    for name, secs in seconds.items():
        speed = "" if name.startswith("start-up") else f"  {size / secs / 1e9:6.2f} GB/s"
        verdict = "" if statuses[name] == {0} else f"  (exit {', '.join(map(str, sorted(statuses[name])))}: a verdict)"
        print(f"  {name:36s} {secs:7.3f} s  {medians[name]:7.3f} s{speed}{verdict}")

    python = seconds["start-up: python -c pass"]
    digest = seconds["hashlib.file_digest"]
    # the slower of curl and hashlib: min(curl, hashlib) in speed; best and median
    anchors = {"hashlib.file_digest": (digest, medians["hashlib.file_digest"]),
               "min(curl, hashlib)": (max(seconds["curl -s -o"], digest),
                                      max(medians["curl -s -o"], medians["hashlib.file_digest"]))}
    measures = []  # the RESULT line benchmarks/run_all.py reads
    print("ratios of speeds, best (median) [our start-up beyond python's subtracted]")

    def ratio(name: str, anchor: str, startup: Optional[str] = None, target: Optional[float] = None) -> None:
        (best, median), ours = anchors[anchor], seconds[name]
        line = f"  {name} / {anchor}: {best / ours:.2f} ({median / medians[name]:.2f})"
        if startup is not None:
            extra = seconds[startup] - python
            work = ours - extra  # what is left when our start-up beyond python's is taken away
            line += f" [{best / work:.2f}]" if work > 0 else " [start-up is all of it]"
            room = best / target - work  # the start-up, beyond python's, that the target leaves
            line += f"  (target >= {target}; start-up {extra:.3f} s, the target leaves {room:.3f} s)"
        print(line)
        measures.append({"name": f"{name} / {anchor}", "value": best / ours,
                         "target": None if target is None else f">= {target}"})

    ratio("phasegpt-ckpt fetch", "min(curl, hashlib)", "start-up: fetch NAME (cached)", 0.8)
    ratio("transfer() in python -c", "min(curl, hashlib)", "start-up: import transfer, mirrors", 0.8)
    ratio("hash_file (verify)", "hashlib.file_digest", "start-up: import digest", 0.9)
    ratio("phasegpt-ckpt verify FILE", "hashlib.file_digest", "start-up: verify FILE (1 KiB)", 0.9)
    ratio("verify FILE (an artifact's copy)", "hashlib.file_digest")
    ratio("phasegpt-ckpt verify NAME", "hashlib.file_digest")
    print(f"  sha256sum / hashlib.file_digest: {digest / seconds['sha256sum']:.2f}")
    measures.append({"name": "sha256sum / hashlib.file_digest", "value": digest / seconds["sha256sum"],
                     "target": None})
    for name in ("start-up: verify FILE (1 KiB)", "start-up: fetch NAME (cached)", "start-up: phasegpt-ckpt --help"):
        measures.append({"name": f"{name.removeprefix('start-up: ')} start-up beyond python's, s",
                         "value": seconds[name] - python, "target": None})
    if args.cdn_mib:
        measures.extend(cdn_comparison(args.cdn_mib, env, ckpt))
    print("RESULT " + json.dumps({"measures": measures}))


# -- a CDN that caps each connection: segmented fetch against aria2c, curl and hf_hub_download ----------

CDN_RATE, CDN_RTT = 25e6, 0.030  # bytes/s per connection, seconds per round trip
CDN = REPO / "tests" / "emulators" / "cdn.py"
ARIA2 = ["aria2c", "-q", "-x16", "-s16", "-k1M", "--allow-overwrite=true", "--auto-file-renaming=false",
         "--file-allocation=none", "--check-certificate=false"]
HF_DOWNLOAD = ("import sys; from huggingface_hub import hf_hub_download; "
               "hf_hub_download('org/ckpt', 'blob.bin', cache_dir=sys.argv[1])")


class Cdn:
    """tests/emulators/cdn.py in its own process, serving ``path``; :meth:`sent` asks it how many body bytes
    went out."""

    def __init__(self, path: Path, rate: float = CDN_RATE, rtt: float = CDN_RTT):
        self.process = subprocess.Popen([PYTHON, str(CDN), str(path), str(rate), str(rtt)], stdout=subprocess.PIPE,
                                         text=True)
        self.origin = f"http://127.0.0.1:{self.process.stdout.readline().strip()}"
        self.url = f"{self.origin}/{path.name}"

    def sent(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"{self.origin}/stats") as answer:
            return json.load(answer)["sent"]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


def cdn_comparison(size_mib: int, env: dict, ckpt: list[str]) -> list[dict]:
    """One run of each download from the throttled CDN (25 MB/s per connection, 30 ms round trip), then the
    bytes a fetch moves when killed twice (kill -9) and finished from another mirror. Returns RESULT measures."""
    size = size_mib * 2**20
    with tempfile.TemporaryDirectory(prefix="phasegpt-cdn-") as tmp:
        work = Path(tmp)
        source = work / "blob.bin"
        sha256 = make_file(source, size)
        cdn = Cdn(source)
        try:
            seconds = _cdn_downloads(work, cdn, size, sha256, env, ckpt)
            moved = _bytes_moved_across_kills(work, source, cdn, size, sha256, env, ckpt)
        finally:
            cdn.close()
    print(f"throttled CDN: {size_mib} MiB, {CDN_RATE / 1e6:.0f} MB/s per connection, {CDN_RTT * 1e3:.0f} ms round "
          "trip, one run each (2 shared cores: the server, the client and hashing compete)")
    for name, secs in seconds.items():
        shown = "absent (apt-get install aria2)" if secs is None else f"{secs:7.3f} s  {size / secs / 1e6:7.1f} MB/s"
        print(f"  {name:36s} {shown}")
    ours = seconds["phasegpt-ckpt fetch (verified)"]
    measures = []
    for anchor, target in (("aria2c -x16 -s16 -k1M", 1.0), ("curl -s -o", 8.0), ("hf_hub_download", None)):
        if seconds.get(anchor) is not None:
            print(f"  fetch / {anchor}: {seconds[anchor] / ours:.2f}x" + (f"  (target >= {target})" if target else ""))
            measures.append({"name": f"CDN fetch / {anchor}", "value": seconds[anchor] / ours,
                             "target": None if target is None else f">= {target}"})
    print(f"  bytes moved, two kill -9 and a finish from another mirror: {moved / size:.3f} x the file "
          "(target <= 1.15)")
    measures.append({"name": "CDN bytes moved across two kills / file", "value": moved / size, "target": "<= 1.15"})
    return measures


def _cdn_downloads(work: Path, cdn: Cdn, size: int, sha256: str, env: dict, ckpt: list[str]) -> dict:
    out, cache = work / "out.bin", work / "cache"
    manifest = work / "cdn.yaml"
    write_manifest(manifest, cdn.url, size, sha256)
    seconds: dict[str, Optional[float]] = {}

    def clear():
        out.unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "hf", ignore_errors=True)

    commands = {"aria2c -x16 -s16 -k1M": [*ARIA2, "-d", str(work), "-o", out.name, cdn.url] if shutil.which("aria2c")
                else None,
                "curl -s -o": ["curl", "-s", "-o", str(out), cdn.url],
                "phasegpt-ckpt fetch (verified)": [*ckpt, "--quiet", "--manifest", str(manifest), "--cache-dir",
                                                   str(cache), "fetch", "blob"]}
    for name, command in commands.items():
        clear()
        seconds[name] = None if command is None else timed(command, env)[0]
    clear()
    seconds["hf_hub_download"] = _hf_hub_download(work, size, env)
    clear()
    return seconds


def _hf_hub_download(work: Path, size: int, env: dict) -> Optional[float]:
    """huggingface_hub (no hf_transfer, no Xet) against the Hub emulator, its CDN throttled the same way."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from emulators.fileserver import Faults
        from emulators.hf import HfEmulator
    except ImportError:
        return None
    with HfEmulator() as hub:
        hub.add_repo("org/ckpt")
        hub.put("org/ckpt", "blob.bin", (work / "blob.bin").read_bytes())
        hub.cdn.set_faults(hub.cdn_path("org/ckpt", "blob.bin"), Faults(bytes_per_second=CDN_RATE, stall=CDN_RTT))
        hf_env = {**env, "HF_ENDPOINT": hub.origin, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                  "HF_HOME": str(work / "hf")}
        hf_env.pop("HF_TOKEN", None)
        return timed([PYTHON, "-c", HF_DOWNLOAD, str(work / "hf")], hf_env)[0]


def _bytes_moved_across_kills(work: Path, source: Path, cdn: Cdn, size: int, sha256: str, env: dict,
                              ckpt: list[str]) -> int:
    """Fetch from ``cdn``, kill -9 it at a third and at two thirds of the file (as served), stop ``cdn`` and
    finish from a second CDN: the body bytes both served, all told."""
    cache, first, second = work / "kills-cache", work / "first.yaml", work / "second.yaml"
    other = Cdn(source)
    try:
        write_manifest(first, cdn.url, size, sha256)
        write_manifest(second, other.url, size, sha256, cdn.url)  # the other mirror first; the first one is gone
        start = cdn.sent()
        for share in (1 / 3, 2 / 3):
            fetch = subprocess.Popen([*ckpt, "--quiet", "--manifest", str(first), "--cache-dir", str(cache), "fetch",
                                      "blob"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            while fetch.poll() is None and cdn.sent() - start < share * size:
                time.sleep(0.01)
            fetch.kill()
            fetch.wait()
        moved = cdn.sent() - start
        cdn.close()
        timed([*ckpt, "--quiet", "--manifest", str(second), "--cache-dir", str(cache), "fetch", "blob"], env)
        return moved + other.sent()
    finally:
        other.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        main()
