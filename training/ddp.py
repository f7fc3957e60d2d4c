"""Data-parallel helpers for distillation under ``torchrun`` (NCCL on GPUs, gloo on CPU).

Only the adapter tensors train (≈0.1–0.4 M parameters), so gradients are averaged with one
all-reduce of a single flat bucket after the last micro-batch of each optimiser step — DDP's
semantics (mean gradient over the global batch) without wrapping the model, which keeps the model's
own ``encode``/``decode_*`` methods, the distillation hooks and activation checkpointing untouched,
and tolerates parameters that receive no gradient on some step. Only rank 0 writes files and events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """torchrun's contract is its environment (RANK, WORLD_SIZE, LOCAL_RANK); read only at start-up."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str) -> DistInfo:
    """Join the process group started by torchrun (no-op for a single process).

    ``device`` is the run's device setting: CUDA runs use NCCL with one GPU per local rank, CPU runs
    gloo.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device("cuda", local_rank)} if use_cuda else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        # Both ranks tear down together: a gloo rank that destroys its group while its peer is still
        # sending aborts at exit ("terminate called without an active exception"; seen on a loaded CPU).
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Replace every gradient by its mean over ranks (missing gradients count as zeros)."""
    if not info.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def broadcast_tensors(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Make every rank hold rank 0's values (start-up and resume)."""
    if not info.enabled:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if the flag is set on any rank (so that all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks (the logged loss is that of the global batch)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
