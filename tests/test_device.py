import pytest
import torch

from phasegpt_ckpt.device import pick_device
from phasegpt_ckpt.errors import BadInput


def test_auto_prefers_cuda_then_mps_then_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected


def test_unknown_device_is_bad_input():
    with pytest.raises(BadInput, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_missing_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadInput, match="no CUDA GPU"):
        pick_device("cuda")
