"""olah (a Hugging Face Hub mirror server nobody here wrote) in offline mode, serving local git repositories."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import requests


@contextlib.contextmanager
def olah_serving(mirrors: Path, workdir: Path, probe: str) -> Iterator[str]:
    """Run olah on a free loopback port over the repositories in ``mirrors`` (ORG/NAME git repos); yield its
    origin once ``probe`` (a path such as ``/org/ckpt/resolve/main/input.txt``) answers; stop it after."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    config = workdir / "olah.toml"
    config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{workdir / "repos"}"\n'
                      f'mirrors-path = ["{mirrors}"]\n\n[accessibility]\noffline = true\n')
    cli = Path(sys.executable).with_name("olah-cli")
    server = subprocess.Popen([str(cli), "-c", str(config), "--log-path", str(workdir / "logs")], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    origin = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.head(origin + probe, timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None, "olah exited at start-up"
                assert time.monotonic() < deadline, f"olah did not answer on {origin} within 60 s"
                time.sleep(0.2)
        yield origin
    finally:
        server.terminate()
        server.wait(timeout=30)
