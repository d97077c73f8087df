import pytest
import torch

from phasegpt_ckpt.models.device import inference_autocast, pick_device
from phasegpt_ckpt.errors import BadInput


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto") == torch.device(expected)


def test_unknown_device_is_bad_input():
    with pytest.raises(BadInput, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_missing_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadInput, match="no CUDA GPU"):
        pick_device("cuda")


def test_missing_mps_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(BadInput, match="no MPS backend"):
        pick_device("mps")


def test_inference_on_the_cpu_runs_in_full_precision():
    layer = torch.nn.Linear(4, 4)
    with inference_autocast(torch.device("cpu")):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
