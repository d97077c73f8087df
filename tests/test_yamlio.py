"""One YAML reader for the manifest, run configs and model configs: one-line errors that name the line,
and aliases bounded, so a few lines of nested anchors (a "billion laughs") are refused at once."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import tiny_model

from phasegpt_ckpt.errors import BadInput
from phasegpt_ckpt.models.checkpoint import load_checkpoint
from phasegpt_ckpt.source.manifest import load_manifest
from phasegpt_ckpt.training.run_config import load_config
from phasegpt_ckpt.yamlio import MAX_ALIAS_GROWTH, read_yaml

REPO = Path(__file__).resolve().parents[1]

# A YAML error on line 5 of each kind of file: a key after a plain value, a tab, a second colon.
BROKEN_MANIFEST = """\
version: 1
default: corpus
artifacts:
  corpus:
    kind: dataset, filename: [input.txt
    size: 3
"""
BROKEN_RUN_CONFIG = """\
model:
  n_layers: 2
  d_model: 64
  n_heads: 4
\tdropout: 0.1
training: {batch_size: 8}
"""
BROKEN_MODEL_CONFIG = """\
model:
  vocab_size: 65
  d_model: 32
  n_layers: 2
  n_heads: 2: 3
"""


def bomb(last: str) -> str:
    """A billion laughs: nine levels of anchors, each naming the one before ten times (10**9 values
    walked as a tree), the last level used where ``last`` says (``{bomb}``)."""
    levels = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 9))
    return levels + last.format(bomb="*a8")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def bare_weights(tmp_path: Path) -> Path:
    """A bare state dict: the loader reads the caller's --config for it before anything else."""
    path = tmp_path / "weights.pt"
    torch.save(tiny_model().state_dict(), path)
    return path


def one_line(raised: pytest.ExceptionInfo) -> str:
    message = str(raised.value)
    assert "\n" not in message, message
    return message


# -- line numbers through the real entry points ------------------------------------------------------


def test_a_broken_manifest_names_its_line(tmp_path):
    path = write(tmp_path, "manifest.yaml", BROKEN_MANIFEST)
    with pytest.raises(BadInput) as raised:
        load_manifest(path)
    assert one_line(raised) == f"manifest {path} is not valid YAML at line 5: mapping values are not allowed here"


def test_a_broken_run_config_names_its_line(tmp_path, run_cli):
    path = write(tmp_path, "run.yaml", BROKEN_RUN_CONFIG)
    with pytest.raises(BadInput) as raised:
        load_config(path)
    assert one_line(raised) == (f"config {path} is not valid YAML at line 5: "
                                "found character '\\t' that cannot start any token")

    code, out, err = run_cli("train", "--config", path, "--save-dir", tmp_path / "run", "--device", "cpu")
    assert code == 2 and f"config {path} is not valid YAML at line 5" in err and "Traceback" not in err


def test_a_broken_model_config_names_its_line(tmp_path, run_cli):
    weights, path = bare_weights(tmp_path), write(tmp_path, "model.yaml", BROKEN_MODEL_CONFIG)
    with pytest.raises(BadInput) as raised:
        load_checkpoint(weights, config=path)
    assert one_line(raised) == (f"model config {path} is not valid YAML at line 5: "
                                "mapping values are not allowed here")

    code, out, err = run_cli("generate", "To be", "--model", weights, "--config", path, "--device", "cpu")
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and line == f"error: {raised.value}"


@pytest.mark.parametrize("text, line, words", [
    ("model:\n  n_layers: 2\n  created: 2024-13-45\n", 3, "holds a value that cannot be read at line 3: month"),
    ("model:\n  n_layers: " + "9" * 5000 + "\n", 2, "holds a value that cannot be read at line 2: Exceeds the limit"),
    ("model:\n  name: ok\n  other: \x1f\n", 3, "is not valid YAML at line 3: special characters are not allowed"),
    ("model: {n_layers: *nowhere}\n", 1, "is not valid YAML at line 1: found undefined alias 'nowhere'"),
    ("model: {}\n---\nmodel: {}\n", 2, "is not valid YAML at line 2: but found another document"),
], ids=["impossible-date", "5000-digit-number", "control-character", "undefined-alias", "two-documents"])
def test_values_and_characters_yaml_refuses_name_their_line(tmp_path, text, line, words):
    path = write(tmp_path, "run.yaml", text)
    with pytest.raises(BadInput) as raised:
        load_config(path)
    assert one_line(raised).startswith(f"config {path} {words}") and f"at line {line}" in str(raised.value)


def test_files_that_cannot_be_read_are_one_line(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    for name, words in (("absent.yaml", "model config {} not found"),
                        ("dir.yaml", "model config {} is a directory, not a YAML file"),
                        ("binary.yaml", "model config {} is not a UTF-8 text file"),
                        ("loop.yaml", "cannot read model config {}: ")):
        with pytest.raises(BadInput) as raised:
            read_yaml(tmp_path / name, "model config")
        assert one_line(raised).startswith(words.format(tmp_path / name))


def test_aliases_a_person_writes_still_read(tmp_path):
    path = write(tmp_path, "run.yaml", textwrap.dedent("""\
        base: &base {n_layers: 2, d_model: 64, n_heads: 4}
        model: {<<: *base, d_model: 128}
        schedules: [*base, *base, *base]
        """))
    assert read_yaml(path, "config") == {
        "base": {"n_layers": 2, "d_model": 64, "n_heads": 4},
        "model": {"n_layers": 2, "d_model": 128, "n_heads": 4},
        "schedules": [{"n_layers": 2, "d_model": 64, "n_heads": 4}] * 3}
    assert load_config(path).model["d_model"] == 128
    assert read_yaml(write(tmp_path, "empty.yaml", "# nothing\n"), "config") is None


def test_aliases_just_within_the_bound_read_and_just_past_it_do_not(tmp_path):
    values = ", ".join(["x"] * 99)  # a node of 100 values, named 100 times: 9,900 more than written
    within = write(tmp_path, "within.yaml", f"a: &a [{values}]\nb: [{', '.join(['*a'] * 100)}]\n")
    assert len(read_yaml(within, "config")["b"]) == 100 and 99 * 100 <= MAX_ALIAS_GROWTH
    past = write(tmp_path, "past.yaml", f"a: &a [{values}]\nb: [{', '.join(['*a'] * 102)}]\n")
    with pytest.raises(BadInput, match="its aliases expand past 10000 values at line 2"):
        read_yaml(past, "config")


def test_a_value_that_contains_itself_is_refused(tmp_path):
    path = write(tmp_path, "run.yaml", "model: {n_layers: 2}\nloop: &loop {again: *loop}\n")
    with pytest.raises(BadInput) as raised:
        load_config(path)
    assert one_line(raised) == f"invalid config {path}: the value at line 2 contains itself through an alias"


def test_a_merge_key_bomb_is_refused(tmp_path):
    """``<<`` merges copy the merged mapping's pairs: nested merges grow a list 10x per level."""
    text = "m0: &m0 {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}\n" + "".join(
        f"m{n}: &m{n} {{<<: [{', '.join([f'*m{n - 1}'] * 10)}]}}\n" for n in range(1, 9))
    with pytest.raises(BadInput, match="its aliases expand past"):
        read_yaml(write(tmp_path, "merge.yaml", text), "config")


# -- a billion laughs, through each reader, in a process of its own -------------------------------

# Runs the entry point once; prints the message, the seconds it took and the growth of the peak RSS.
# The address space is capped 1 GiB above what the imports took: a reader that expands the aliases
# fails there with MemoryError instead of taking the test machine with it.
MEASURE = textwrap.dedent("""\
    import json, os, resource, sys, time
    import torch
    from phasegpt_ckpt.errors import BadInput
    from phasegpt_ckpt.models.checkpoint import load_checkpoint
    from phasegpt_ckpt.source.manifest import load_manifest
    from phasegpt_ckpt.training.run_config import load_config

    reader, path, weights = sys.argv[1:]
    call = {"manifest": lambda: load_manifest(path), "run config": lambda: load_config(path),
            "model config": lambda: load_checkpoint(weights, config=path)}[reader]
    if reader == "model config":
        torch.load(weights, weights_only=True)  # torch's own first-load work, outside the measurement
    pages = int(open("/proc/self/statm").read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        call()
        message = None
    except BadInput as err:
        message = str(err)
    seconds = time.perf_counter() - start
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"message": message, "seconds": seconds, "grown_kib": grown_kib}))
    """)

BOMBS = {  # reader: (the name in its messages, the document)
    "manifest": ("manifest", "version: 1\n" + bomb("artifacts: {{x: {{kind: dataset, filename: f, mirrors: {bomb}}}}}\n")),
    "run config": ("config", bomb("model: {{n_layers: 2, d_model: 64, n_heads: 4}}\nnotes: {bomb}\n")),
    "model config": ("model config", bomb("model: {{n_heads: 2, notes: {bomb}}}\n")),
}


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures memory through /proc")
@pytest.mark.parametrize("reader", list(BOMBS))
def test_a_billion_laughs_is_refused_fast_and_small(tmp_path, reader):
    what, text = BOMBS[reader]
    path, weights = write(tmp_path, "bomb.yaml", text), bare_weights(tmp_path)

    done = subprocess.run([sys.executable, "-c", MEASURE, reader, str(path), str(weights)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    # the first level past the bound: a3 stands for 11,111 values
    line = 1 + next(n for n, text in enumerate(text.splitlines()) if text.startswith("a3:"))
    assert result["message"] == (f"invalid {what} {path}: its aliases expand past {MAX_ALIAS_GROWTH} values "
                                 f"at line {line}; write the values out instead")
    assert result["seconds"] < 1.0, result
    assert result["grown_kib"] < 20 * 1024, result  # the document is 1 kB; a few MiB of Python at most


def test_the_hostile_manifest_bomb_is_refused_by_the_reader(tmp_path):
    """The billion laughs of test_hostile_input now stops at the reader, before pydantic sees it."""
    path = write(tmp_path, "manifest.yaml",
                 "version: 1\n" + bomb("artifacts: {{x: {{kind: dataset, filename: f, mirrors: {bomb}}}}}\n"))
    with pytest.raises(BadInput) as raised:
        load_manifest(path)
    assert re.fullmatch(rf"invalid manifest {re.escape(str(path))}: its aliases expand past \d+ values at line \d+; "
                        r"write the values out instead", one_line(raised))
