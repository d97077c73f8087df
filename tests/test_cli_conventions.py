"""What a person typing commands expects: flags shown as flags, options anywhere, JSON everywhere, no junk accepted."""
from __future__ import annotations

import io
import json
import stat
import sys

import pytest

from phasegpt_ckpt import __version__
from phasegpt_ckpt.cli.app import hoist_global_options

PROMPT = "To be or not to be"


def test_version_and_help_show_flags_as_flags(run_cli):
    code, out, err = run_cli("--version")
    assert (code, out.strip()) == (0, f"phasegpt-ckpt {__version__}")
    code, out, err = run_cli("verify", "--help")
    assert code == 0 and "--eval" in out and "--json" in out and "<bool>" not in out


def test_global_options_are_taken_after_the_command_too(run_cli, tmp_path):
    code, out, err = run_cli("list", "--cache-dir", tmp_path / "elsewhere", "--json", "--offline")
    assert code == 0 and {row["name"] for row in json.loads(out)} >= {"phasegpt-tiny", "tinyshakespeare"}
    code, out, err = run_cli("fetch", "phasegpt-tiny", "--cache-dir", tmp_path / "elsewhere", "-q")
    assert code == 0 and err == "" and (tmp_path / "elsewhere" / "receipts" / "phasegpt-tiny.json").is_file()
    assert hoist_global_options(["publish", "x.pt", "--manifest", "m.yaml", "--offline"]) == [
        "--offline", "publish", "x.pt", "--manifest", "m.yaml"]  # publish's own --manifest stays its own


@pytest.mark.parametrize("option", ["--temperature", "--top-p"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_float_option_that_is_not_a_number_is_refused_in_one_line(run_cli, option, value):
    code, out, err = run_cli("generate", PROMPT, "--model", "phasegpt-tiny", option, value)
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "finite" in err and "Traceback" not in err


def test_generate_reads_stdin_says_its_seed_and_speaks_json(run_cli, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT + "\n"))
    code, out, err = run_cli("generate", "-", "--model", "phasegpt-tiny", "--max-new-tokens", 20)
    assert code == 0 and out.startswith(PROMPT) and len(out) == len(PROMPT) + 20
    seed = int(err.split("seed ")[1].split()[0])  # drawn, and said: the same seed gives the same text
    code, again, _ = run_cli("generate", PROMPT, "--model", "phasegpt-tiny", "--max-new-tokens", 20, "--seed", seed,
                             "--json")
    document = json.loads(again)
    assert code == 0 and document["seed"] == seed and document["samples"] == [out]


def test_config_and_convert_speak_json_and_convert_never_overwrites_unasked(run_cli, tmp_path):
    code, out, err = run_cli("config", "phasegpt-tiny", "--json")
    assert code == 0 and json.loads(out)["model"]["n_layers"] >= 1
    code, out, err = run_cli("config", "phasegpt-tiny", "-o", tmp_path)  # a directory: one line, not a traceback
    assert code == 2 and err.strip() == f"error: {tmp_path} is a directory; name the file to write inside it"
    target = tmp_path / "tiny.safetensors"
    code, out, err = run_cli("convert", "phasegpt-tiny", "--to", "safetensors", "-o", target, "--json")
    facts = json.loads(out)
    assert code == 0 and facts["path"] == str(target) and facts["size"] == target.stat().st_size
    assert stat.S_IMODE(target.stat().st_mode) & 0o644 == 0o644  # readable by all, as any file the user makes
    before = target.read_bytes()
    code, out, err = run_cli("convert", "phasegpt-tiny", "--to", "safetensors", "-o", target)
    assert code == 2 and "--force" in err and target.read_bytes() == before
    code, out, err = run_cli("convert", "phasegpt-tiny", "--to", "safetensors", "-o", tmp_path)
    assert code == 2 and "is a directory" in err
    code, out, err = run_cli("convert", "phasegpt-tiny", "--to", "safetensors", "-o", target, "--force")
    assert code == 0


def test_verify_json_keeps_numbers_as_numbers(run_cli):
    code, out, err = run_cli("verify", "phasegpt-tiny", "--eval", "--device", "cpu", "--json")
    (verdict,) = json.loads(out)
    claim = next(row for row in verdict["checks"] if row["check"] == "validation_ppl (manifest)")
    size = next(row for row in verdict["checks"] if row["check"] == "size (manifest)")
    assert code == 0 and isinstance(claim["expected"], float) and isinstance(claim["tolerance"], float)
    assert isinstance(claim["actual"], float) and abs(claim["actual"] - claim["expected"]) <= claim["tolerance"]
    assert isinstance(size["expected"], int) and size["expected"] == size["actual"] == verdict["size"]


def _garbage(tmp_path) -> dict:
    """Files that claim to be checkpoints and are not, each with what verify must say about it."""
    from phasegpt_ckpt import Store
    from phasegpt_ckpt.models.checkpoint import convert

    bundled = Store(offline=True).load("phasegpt-tiny")
    whole = convert(bundled, tmp_path / "whole.safetensors").read_bytes()
    pickle = bundled.path.read_bytes()
    files = {"text.pt": (b"hello, I am not a checkpoint\n", "not a checkpoint"),
             "cut.pt": (pickle[: len(pickle) // 2], "truncated"),
             "cut-header.safetensors": (whole[:20], "truncated"),
             "cut-body.safetensors": (whole[: len(whole) // 2], "truncated")}
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {tmp_path / name: said for name, (_, said) in files.items()}


def test_verify_never_says_yes_to_garbage_and_info_says_what_it_is(run_cli, tmp_path):
    for path, said in _garbage(tmp_path).items():
        code, out, err = run_cli("verify", path)
        assert code == 1 and "FAILED" in out and said in err and len(err.strip().splitlines()) == 1, (path, err)
        code, out, err = run_cli("info", path, "--json")
        assert code == 0 and said in json.loads(out)["checkpoint"]["unreadable"], path
    code, out, err = run_cli("verify", tmp_path / "whole.safetensors")
    assert code == 0 and "no mismatch" in out  # a sound file no artifact vouches for: readable, not pinned
