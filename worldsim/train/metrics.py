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

import heapq
import json
from collections import defaultdict
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
        trace = self.folder / f"rank{self.rank}_trace.json"
        self.prof.export_chrome_trace(str(trace))
        self.prof = None
        ops.write_text(table + device_idle_report(json.loads(trace.read_text())))
        return ops


_DEVICE_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")
_HOST_EVENTS = ("user_annotation", "cpu_op")


def device_idle_report(trace: dict, min_gap_us: float = 5.0, top: int = 15) -> str:
    """Where the device sat idle in a profiled window, from its Chrome / Kineto trace: the share of the
    window (first to last device event) in which no kernel, copy or memset ran on any stream, the longest
    gaps, and what the host was doing in them: for each gap of at least `min_gap_us`, the innermost host
    operator or `record_function` range open at its middle (the trainer labels its phases "train: ...").
    '' when the trace holds no device events (a CPU run)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    device = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events if e.get("cat") in _DEVICE_EVENTS
    )
    if not device:
        return ""
    busy: list[list[float]] = []
    for start, end in device:  # union of the device intervals over all streams
        if busy and start <= busy[-1][1]:
            busy[-1][1] = max(busy[-1][1], end)
        else:
            busy.append([start, end])
    gaps = [(a[1], b[0]) for a, b in zip(busy, busy[1:]) if b[0] - a[1] >= min_gap_us]
    window = busy[-1][1] - busy[0][0]
    idle = sum(b - a for a, b in gaps)
    host = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e["dur"]), e.get("name", "?"), e.get("cat"))
        for e in events
        if e.get("cat") in _HOST_EVENTS
    )
    by_innermost: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_phase: dict[str, float] = defaultdict(float)
    longest = []
    open_: list[tuple[float, float, str, str]] = []  # heap by end: (end, dur, name, cat)
    i = 0
    for start, end in gaps:  # gaps are in time order: sweep the host ranges open at each gap's middle
        mid = (start + end) / 2
        while i < len(host) and host[i][0] <= mid:
            h_start, h_end, name, cat = host[i]
            heapq.heappush(open_, (h_end, h_end - h_start, name, cat))
            i += 1
        while open_ and open_[0][0] < mid:
            heapq.heappop(open_)
        inner = min(open_, key=lambda h: h[1])[2] if open_ else "(no host range open)"
        by_innermost[inner][0] += end - start
        by_innermost[inner][1] += 1
        for _, _, name, cat in open_:
            if cat == "user_annotation" and name.startswith("train: "):
                by_phase[name] += end - start
        longest.append((end - start, inner))
    lines = [
        f"device idle: {idle / 1e3:.1f} of {window / 1e3:.1f} ms ({100 * idle / max(window, 1e-9):.1f}%) in "
        f"{len(gaps)} gaps of >= {min_gap_us:g} us between the first and the last device event",
        "idle by trainer phase open (record_function 'train: ...'):",
        *(f"  {name:40} {ms / 1e3:9.2f} ms" for name, ms in sorted(by_phase.items(), key=lambda kv: -kv[1])),
        "idle by the innermost host range open at each gap's middle:",
        *(
            f"  {name[:60]:60} {v[0] / 1e3:9.2f} ms in {v[1]:5d} gaps"
            for name, v in sorted(by_innermost.items(), key=lambda kv: -kv[1][0])[:top]
        ),
        "longest gaps:",
        *(f"  {d / 1e3:9.2f} ms  {name[:80]}" for d, name in sorted(longest, reverse=True)[:5]),
    ]
    return "\n".join(lines) + "\n"
