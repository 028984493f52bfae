"""Throughput accounting (FLOPs per window, MFU) and the metrics log (metrics.jsonl, TensorBoard if installed).

FLOPs are counted, not estimated by hand: one forward of the stage's networks runs on the meta device
under `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention, shapes only, no
memory), and a training step counts 3x the forward of what is trained (forward + backward for
activations and weights) plus 1x the forward of what is frozen (the encoder in the dynamics stages).
This is the ~6 * params * tokens rule plus attention, without its approximations. Attention counts
only the query-key pairs the block-causal mask allows (the useful work, whichever kernel runs it: a
dense masked SDPA computes every score, flex-attention skips the empty tiles), so MFU compares
backends fairly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from worldsim.models.config import WorldModelConfig
from worldsim.models.dynamics import frame_mask_to_tokens, training_frame_mask
from worldsim.models.flow import training_sequence_frames
from worldsim.models.world_model import WorldModel
from worldsim.train.stages import RECONSTRUCTION_STAGES

# Dense peak FLOP/s per device by name fragment (NVIDIA datasheets, without sparsity).
PEAK_FLOPS = {
    torch.bfloat16: {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12},
    torch.float32: {"H200": 67e12, "H100": 67e12, "A100": 19.5e12, "L40S": 91.6e12, "A10": 31.2e12},
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense peak for `dtype`, or None where unknown (CPUs: MFU is reported as n/a)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.get(dtype, {}).items() if k in name), None)


# What the counter reports attention as: batched matmuls of the math path (the meta device), or the
# fused kernels' own ops where they run.
_ATTENTION_OPS = ("bmm", "scaled_dot_product", "flex_attention")


def _count_split(fn: Any) -> tuple[int, int]:
    """(attention FLOPs, all other FLOPs) of fn()."""
    with FlopCounterMode(display=False) as counter:
        fn()
    ops = counter.get_flop_counts()["Global"]
    attention = sum(v for op, v in ops.items() if any(a in str(op) for a in _ATTENTION_OPS))
    return attention, counter.get_total_flops() - attention


def _count(fn: Any) -> int:
    return sum(_count_split(fn))


def train_flops_per_window(cfg: WorldModelConfig, stage: str, teacher_steps: int = 0) -> float:
    """FLOPs of one training window (all its frames) in `stage`, counted on the meta device; stage
    distill adds its teacher's `teacher_steps` forward passes."""
    with torch.device("meta"):
        model = WorldModel(cfg)
        Fr = cfg.num_frames
        frames = torch.zeros(Fr, 3, cfg.height, cfg.width)
        encode = _count(lambda: model.tokenizer.moments(frames))
        if stage in RECONSTRUCTION_STAGES:
            latents = torch.zeros(Fr, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
            decode = _count(lambda: model.tokenizer.decoder(latents))
            # A frozen encoder only runs forward (no backward passes through it).
            return 3.0 * (encode + decode) if stage == "tokenizer" else encode + 3.0 * decode
        L = training_sequence_frames(Fr)
        z = torch.zeros(1, L, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        t = torch.zeros(1, L)
        actions = torch.zeros(1, L, cfg.action_dim)
        pos = torch.zeros(L, dtype=torch.long)
        # The frame mask once, on the CPU (its density scales attention); the token mask from it on the
        # meta device, shapes only (for `base` it would be 64 MB of values).
        frame_mask = training_frame_mask(Fr, cfg.num_context_frames, "cpu")
        mask = frame_mask_to_tokens(frame_mask.to("meta"), cfg.tokens_per_frame)
        attention, rest = _count_split(lambda: model.dynamics(z, t, actions, pos, mask))
        allowed = float(frame_mask.float().mean())
        passes = 3.0 + (teacher_steps if stage == "distill" else 0)  # forward + backward, + teacher's
        return passes * (attention * allowed + rest) + encode


class MetricsLog:
    """Appends one JSON object per line to JOB/metrics.jsonl (rank 0), mirrored to TensorBoard if present."""

    def __init__(self, job_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(job_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(job_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = int(record.get("iter", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iter":
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class ProfileWindow:
    """torch.profiler over iterations [start, start + iters) of a run (`trainer.profile_start` /
    `trainer.profile_iters`; start 0 = never), as torchtitan's profiling option. Each rank writes
    `rank{r}_ops.txt` (operators by device time, then by CPU time) and a Chrome / Perfetto trace
    `rank{r}_trace.json` in `folder`."""

    def __init__(self, start: int, iters: int, folder: Path, rank: int, device: torch.device) -> None:
        self.start, self.stop = start, start + iters - 1
        self.folder, self.rank, self.device = folder, rank, device
        self.prof: torch.profiler.profile | None = None

    def before(self, step: int) -> None:
        if self.start > 0 and step == self.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()

    def after(self, step: int) -> Path | None:
        """Ends the window after its last step; returns the ops table's path then. (The profiler's own cost
        slows the log interval it falls in.)"""
        if self.prof is None or step != self.stop:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.prof.__exit__(None, None, None)
        self.folder.mkdir(parents=True, exist_ok=True)
        events = self.prof.key_averages()
        device_sort = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = (
            f"iterations {self.start}..{self.stop}, rank {self.rank}\n"
            f"by device time:\n{events.table(sort_by=device_sort, row_limit=40)}\n"
            f"by CPU time:\n{events.table(sort_by='cpu_time_total', row_limit=25)}\n"
        )
        ops = self.folder / f"rank{self.rank}_ops.txt"
        ops.write_text(table)
        self.prof.export_chrome_trace(str(self.folder / f"rank{self.rank}_trace.json"))
        self.prof = None
        return ops
