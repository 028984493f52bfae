"""Distributed setup and FSDP2, applied to the model from outside (torchtitan's parallelize.py).

One code path for 1..N processes: a process group always exists (gloo on CPU, NCCL on CUDA; a lone
process without torchrun gets a world of one over an in-memory store), and every model is wrapped
with `fully_shard` — per transformer block, then the tokenizer's encoder and decoder, then the root.
With one process FSDP2 shards over a mesh of one, so the single-GPU run is the same program.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun job (or make a world of one) and pick this rank's device."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        timeout = timedelta(seconds=timeout_s)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun: env:// rendezvous
            dist.init_process_group(backend, timeout=timeout, device_id=device if cuda else None)
        else:  # a lone process: an in-memory store, no port to pick
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow and lose exactness)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def parallelize(
    root: nn.Module,
    world_model: nn.Module,
    device: torch.device,
    param_dtype: torch.dtype,
    activation_checkpointing: bool = False,
    compile: bool = False,
    compile_mode: str = "default",
) -> DeviceMesh:
    """Shard `world_model` (a submodule of `root`, whose forward computes the loss) with FSDP2, in place.

    Order matters: inner groups first (each transformer block, the encoder, the decoder), so that the
    root's group holds only what is left (embeddings, final layer) and its forward drives the rest.
    `compile` compiles each of those groups in place (parameter names do not change): the blocks, and
    the encoder and decoder, which every stage runs (the dynamics stages encode each window's frames),
    in torch.compile's `compile_mode`.
    """
    # A block returns its attention (k, v) for the KV cache; they are views, which FSDP2 warns about in
    # case of in-place edits. Training never edits them, so the warning is noise on every step.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = world_model.dynamics.blocks
    for i, block in enumerate(blocks):
        if activation_checkpointing:
            block = checkpoint_wrapper(block)  # keys keep their names: DCP strips the wrapper prefix
        if compile:
            block.compile(mode=compile_mode)  # in place, so parameter names do not change
        fully_shard(block, mesh=mesh, mp_policy=mp)
        blocks[i] = block
    for part in (world_model.tokenizer.encoder, world_model.tokenizer.decoder):
        if compile:
            part.compile(mode=compile_mode)
        fully_shard(part, mesh=mesh, mp_policy=mp)
    fully_shard(root, mesh=mesh, mp_policy=mp)
    return mesh


def clean_name(name: str) -> str:
    """A parameter name as the plain `WorldModel` spells it (no wrapper or compile prefixes)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
