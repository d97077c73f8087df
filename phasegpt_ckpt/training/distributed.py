"""Where a training process runs: alone on one device, or one rank of a torchrun process group.

Under ``torchrun --nproc_per_node=K -m phasegpt_ckpt train ...`` each process joins the group (nccl
on CUDA, gloo on the CPU) and takes its device; rank 0 alone prints and writes.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from phasegpt_ckpt.models.device import pick_device


@dataclass
class Placement:
    """Where this process trains: its device, and its rank among ``world_size`` processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def placement(device: str | torch.device = "auto") -> Iterator[Placement]:
    """This process's device, joining the torchrun process group when RANK/WORLD_SIZE say so.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` (nccl) or the CPU (gloo); alone, the
    device is ``pick_device(device)``. Ranks other than 0 are made quiet: rank 0 alone prints.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = pick_device(device)
    if world_size == 1:
        _enable_tf32(chosen)
        yield Placement(chosen)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    _enable_tf32(chosen)
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    ours = logging.getLogger("phasegpt_ckpt")
    level = ours.level
    if rank != 0:  # one process speaks for the run; the others say only what went wrong
        ours.setLevel(max(level, logging.WARNING))
    try:
        yield Placement(chosen, rank, world_size)
    finally:
        ours.setLevel(level)
        dist.destroy_process_group()


def _enable_tf32(device: torch.device) -> None:
    if device.type == "cuda":  # float32 matmuls on tensor cores; bf16 autocast covers the rest
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
