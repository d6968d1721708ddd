"""Data-parallel training under ``torchrun``: process-group setup, DDP wrapping, rank helpers.

Without the torchrun environment everything degrades to a single process and these are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Rank:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> tuple[Rank, torch.device]:
    """Join the torchrun job if launched by torchrun (NCCL on CUDA, gloo on CPU); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), local), device


def wrap(model: nn.Module, rank: Rank, device: torch.device) -> nn.Module:
    """DDP-wrap ``model`` when running distributed; the plain model otherwise."""
    if not rank.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model.to(device), device_ids=ids)


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
