"""Shared pieces of the trainer tests: BridgeSim data, launching worldsim-train, reading checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def generate_bridge(root: Path, split: str, episodes: int, seed: int) -> None:
    """BridgeSim episodes at the tiny preset's resolution, written by the project's own generator."""
    subprocess.run(
        [str(BIN / "worldsim-gen"), "--out", str(root), "--episodes", str(episodes), "--split", split,
         "--seed", str(seed), "--resolution", "32,48", "--max-steps", "24"],
        check=True, capture_output=True, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip


def train_env(output_root: Path, **extra: str) -> dict[str, str]:
    # One intra-op thread per process (torchrun sets it too): tiny models only wait on a busy 2-core CI box.
    env = {
        **os.environ,
        "WORLDSIM_OUTPUT_ROOT": str(output_root),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    env.pop("WORLDSIM_TEST_SAVE_DELAY", None) if "WORLDSIM_TEST_SAVE_DELAY" not in extra else None
    return env


def torchrun_cmd(nproc: int, *overrides: str) -> list[str]:
    return [
        str(BIN / "torchrun"),
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "worldsim.train",
        *overrides,
    ]


def python_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "worldsim.train", *overrides]


def run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, (
        f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def job_dir(output_root: Path, name: str) -> Path:
    return output_root / "worldsim" / "bridge" / name


def metrics(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie awaiting its reaper does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and all its workers at once, as a machine failure would."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def load_dcp(folder: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """A DCP folder as one flat {key: tensor} dict ("model.x", "ema.x", "optim.state...")."""
    out = tmp / f"{folder.parent.parent.parent.name}_{folder.parent.name}_{folder.name}.pt"
    dcp_to_torch_save(folder, out)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj: object) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(obj, torch.Tensor):
            flat[prefix[:-1]] = obj

    walk("", torch.load(out, weights_only=True))
    return flat
