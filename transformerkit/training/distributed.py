"""Running under torchrun: one process per device, DistributedDataParallel to average gradients, or FSDP
to shard parameters, gradients and optimizer state as well.

No home-made distribution: PyTorch's process group, DDP and FSDP2 (`fully_shard`) do the work. gloo runs on
CPUs, NCCL on GPUs; a timeout on collectives turns a dead rank into an error instead of a hang. Checkpoints
hold whole (unsharded) tensors, so a run resumes under any world size.
"""

from __future__ import annotations

import copy
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
    """DDP, or FSDP with one shard group per Transformer block (so only one block is gathered at a time)
    plus the root for embeddings, final norm and output layer. FSDP replaces the parameters with sharded
    ones: build the optimizer after this."""
    if place.size == 1 and not fsdp:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from ..nn import TransformerBlock

        if not dist.is_initialized():
            raise ConfigError("--fsdp needs torchrun (a process group); launch with torchrun --nproc_per_node=N")
        for block in [m for m in module.modules() if isinstance(m, TransformerBlock)]:
            fully_shard(block)
        fully_shard(module)
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


class WholeModel:
    """What the main process evaluates and saves. Without FSDP that is the model itself; with FSDP the model's
    parameters are shards, and rank 0 keeps a whole copy refreshed from them when asked (a collective: every
    rank asks at the same points; it gathers at most once per step)."""

    def __init__(self, model: nn.Module, fsdp: bool, is_main: bool):
        self.model, self.fsdp, self.is_main = model, fsdp, is_main
        self.copy = copy.deepcopy(model) if fsdp and is_main else model
        self._step = -1

    def at(self, step: int) -> nn.Module:
        if self.fsdp and self._step != step:
            weights = gather_weights(self.model)
            if self.is_main:
                self.copy.load_state_dict(weights)
            self._step = step
        return self.copy

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The optimizer's state to save (None before its first step: FSDP's gathering would initialise it
        with a step of zero gradients, which counts as a step and changes Adam's bias correction)."""
        if not optimizer.state:
            return None
        return gather_optimizer_state(self.model, optimizer) if self.fsdp else optimizer.state_dict()

    def load(self, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, optimizer_state: dict | None,
             device: torch.device) -> None:
        """Every rank takes the whole weights and optimizer state of a checkpoint (its shards, under FSDP)."""
        if self.fsdp:
            load_sharded(self.model, optimizer, weights, optimizer_state)
            return
        from .checkpoint import load_weights

        load_weights(self.model, weights, "last/model.safetensors")
        self.model.to(device)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)


def _whole(**options) -> "StateDictOptions":  # noqa: F821
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **options)


def gather_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """FSDP: the whole model's weights on rank 0, on the CPU (a collective; other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_whole(cpu_offload=True))


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """FSDP: the optimizer state of whole parameters, keyed by parameter name, on rank 0 (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_whole(cpu_offload=True))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict,
                 optimizer_state: dict | None) -> None:
    """FSDP: every rank takes its shards of whole weights and optimizer state (each rank read the checkpoint)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    tied: dict[int, list[str]] = {}  # a tied parameter under all its names; the first is the one FSDP knows
    for name, parameter in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(parameter), []).append(name)
    whole = {names[0]: next(weights[n] for n in names if n in weights) for names in tied.values()}
    whole.update({name: weights[name] for name, _ in model.named_buffers() if name in weights})
    set_model_state_dict(model, whole, options=_whole(strict=False))
    if optimizer_state is not None:  # None: saved before the first step
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=_whole())


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
