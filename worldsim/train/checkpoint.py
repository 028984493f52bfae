"""DCP checkpoints of a training job, and resuming from the latest complete one.

Layout (torchtitan / Cosmos style), one folder per saved step:

    JOB/checkpoints/iter_000001000/model/       DCP: {"model": weights + buffers, "ema": fp32 EMA weights}
                                   optim/       DCP: {"optim": AdamW state}
                                   scheduler/   scheduler.pt (LambdaLR state, rank 0)
                                   trainer/     rank_00000.pt ... (iteration, data position, RNG states)
                                   meta.json    stage, iteration, world size, model config
    JOB/checkpoints/latest_checkpoint.txt       "iter_000001000"

A checkpoint is valid only once `latest_checkpoint.txt` names it: rank 0 writes that file atomically
after a barrier that every rank reaches only when its part is on disk. A crash mid-save leaves a
folder nobody points to; the next save of that step deletes it first. Weights are saved by plain
`WorldModel` names (DCP strips FSDP / activation-checkpoint wrappers), so any world size can load them.
Trainer files hold only tensors and plain Python values: `torch.load(..., weights_only=True)` reads them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from worldsim.atomic import atomic_write_text
from worldsim.train.ema import EMA

LATEST = "latest_checkpoint.txt"
ITER_RE = re.compile(r"^iter_(\d{9})$")
# Test hook: "ITER:SECONDS" sleeps that long inside the save of step ITER, after the weights are
# written and before the checkpoint is marked complete, so a test can kill the job mid-save.
SAVE_DELAY_ENV = "WORLDSIM_TEST_SAVE_DELAY"


def iter_name(iteration: int) -> str:
    return f"iter_{iteration:09d}"


# ------------------------------------------------------------------------------------------ RNG state
def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(state["python"]))  # type: ignore[arg-type]
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------------ manager
class CheckpointManager:
    """Saves and finds the checkpoints of one job folder."""

    def __init__(self, job_dir: Path, keep_last: int, rank: int, world_size: int) -> None:
        self.dir = Path(job_dir) / "checkpoints"
        self.keep_last, self.rank, self.world_size = keep_last, rank, world_size

    def latest(self) -> Path | None:
        """The folder `latest_checkpoint.txt` names (a complete checkpoint), or None."""
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        folder = self.dir / name
        if not ITER_RE.match(name) or not (folder / "model" / ".metadata").is_file():
            raise RuntimeError(f"{pointer}: names {name!r}, which is not a complete checkpoint folder")
        return folder

    def save(
        self,
        iteration: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: EMA,
        trainer_state: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        """Write every part of step `iteration`'s checkpoint (collective: every rank calls it)."""
        folder = self.dir / iter_name(iteration)
        if self.rank == 0:
            if folder.exists():  # a partial save from a killed run
                shutil.rmtree(folder)
            for part in ("scheduler", "trainer"):
                (folder / part).mkdir(parents=True)
        dist.barrier()
        dcp.save(
            {"model": get_model_state_dict(model), "ema": ema.state_dict()}, checkpoint_id=folder / "model"
        )
        dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=folder / "optim")
        torch.save(trainer_state, folder / "trainer" / f"rank_{self.rank:05d}.pt")
        if self.rank == 0:
            torch.save(scheduler.state_dict(), folder / "scheduler" / "scheduler.pt")
            (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        delay = os.environ.get(SAVE_DELAY_ENV, "")
        if delay and int(delay.split(":")[0]) == iteration:
            time.sleep(float(delay.split(":")[1]))
        dist.barrier()  # every rank's part is on disk
        if self.rank == 0:
            atomic_write_text(self.dir / LATEST, folder.name + "\n")
            self._prune(iteration)
        return folder

    def _prune(self, iteration: int) -> None:
        """Delete complete checkpoints beyond the newest `keep_last` (0 keeps all)."""
        if self.keep_last <= 0:
            return
        done = sorted(p for p in self.dir.iterdir() if ITER_RE.match(p.name) and int(p.name[5:]) <= iteration)
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(
        self,
        folder: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: EMA,
        device: torch.device,
    ) -> dict[str, Any]:
        """Restore everything `save` wrote (in place); returns this rank's trainer state."""
        state = {"model": get_model_state_dict(model), "ema": ema.state_dict()}
        dcp.load(state, checkpoint_id=folder / "model")  # EMA tensors are filled in place
        set_model_state_dict(model, state["model"])
        optim = {"optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(optim, checkpoint_id=folder / "optim")
        set_optimizer_state_dict(model, optimizer, optim["optim"])
        scheduler.load_state_dict(torch.load(folder / "scheduler" / "scheduler.pt", weights_only=True))
        meta = json.loads((folder / "meta.json").read_text())
        rank_file = folder / "trainer" / f"rank_{self.rank:05d}.pt"
        state_file = rank_file if rank_file.exists() else folder / "trainer" / "rank_00000.pt"
        trainer_state = torch.load(state_file, weights_only=True)
        if meta.get("world_size") != self.world_size:
            warnings.warn(
                f"{folder}: saved by {meta.get('world_size')} ranks, resumed on {self.world_size}: weights and "
                "optimiser are resharded exactly, but the data order and RNG streams restart per rank",
                stacklevel=2,
            )
        else:
            set_rng_state(trainer_state["rng"], device)
        return trainer_state
