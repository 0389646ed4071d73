"""Running under torchrun: one process per device, DistributedDataParallel to average gradients.

No home-made distribution: PyTorch's process group and DDP do the work. gloo runs on CPUs, NCCL on GPUs;
a timeout on collectives turns a dead rank into an error instead of a hang.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the environment torchrun sets (a single process when it is not set)."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device, timeout_seconds: int = 120) -> World:
    """Join the process group when launched by torchrun; returns this process's place."""
    place = world()
    if place.size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return place


def device_for(requested: torch.device | str, place: World) -> torch.device:
    device = torch.device(requested)
    if device.type == "cuda" and place.size > 1:
        return torch.device("cuda", place.local_rank)
    return device


class LossModule(nn.Module):
    """The model and its objective as one module whose forward returns the loss: what DDP and FSDP wrap, so
    their hooks see every forward however the objective reaches into the model."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch):
        return self.objective(self.model, batch)


def wrap(module: LossModule, device: torch.device, place: World, fsdp: bool) -> nn.Module:
    if place.size == 1 and not fsdp:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        if not dist.is_initialized():
            raise ConfigError("--fsdp needs torchrun (a process group); launch with torchrun --nproc_per_node=N")
        fully_shard(module)
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def all_reduce_sums(*values: float, device: torch.device) -> list[float]:
    """Each value summed over all ranks, in one collective (the values themselves with one process)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
