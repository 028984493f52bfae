"""Training throughput of worldsim-train on 1..N GPUs of one host: weak scaling, MFU, peak memory.

Each GPU count runs the same experiment for a fixed number of steps (per-GPU batch fixed, so the
global batch grows with N: weak scaling) under torchrun, with no checkpoint and no validation, and
the numbers are read back from the run's own metrics.jsonl (steps after the warm-up only):

    python benchmarks/train_scaling.py --data DATA --gpus 1,2,4                      # base, batch 4/GPU
    python benchmarks/train_scaling.py --data DATA --gpus 4 --experiment bridge_2b_action --iters 12 --warmup 4

Prints a markdown table (frames/s, tokens/s, MFU, peak memory per GPU, weak-scaling efficiency
against the smallest GPU count in the same run) and writes it as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_one(args: argparse.Namespace, gpus: int, root: Path) -> dict:
    job = f"scaling_{args.experiment}_{gpus}gpu"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
        "-m", "worldsim.train", f"experiment={args.experiment}", f"dataset.root={args.data}",
        f"trainer.max_iter={args.iters}", f"trainer.log_every={args.log_every}", "trainer.val_every=0",
        "checkpoint.save_iter=0", "checkpoint.save_final=false", f"job.name={job}",
        f"dataset.num_workers={args.num_workers}", *args.overrides,
    ]  # fmt: skip
    env = {**os.environ, "WORLDSIM_OUTPUT_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{gpus} GPU run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    metrics = next(root.rglob(f"{job}/metrics.jsonl"))
    if (ops := metrics.parent / "profile" / "rank0_ops.txt").exists():  # trainer.profile_start=N
        print(f"{ops}:\n{ops.read_text()}", flush=True)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steady = [r for r in records if "it_per_s" in r and r["iter"] > args.warmup]
    if not steady:
        sys.exit(f"{metrics}: no logged steps after the {args.warmup}-step warm-up; raise --iters")

    def mean(key: str) -> float | None:
        vals = [r[key] for r in steady if isinstance(r.get(key), (int, float))]
        return float(np.mean(vals)) if vals else None

    return {
        "gpus": gpus,
        "frames_per_s": mean("frames_per_s"),
        "tokens_per_s": mean("tokens_per_s"),
        "it_per_s": mean("it_per_s"),
        "mfu": mean("mfu"),
        "tflops_per_s_per_gpu": mean("tflops_per_s_per_rank"),
        "max_memory_gib": max((r.get("max_memory_gib", 0.0) for r in records), default=None),
        "loss_first": records[0].get("loss"),
        "loss_last": steady[-1].get("loss"),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Bridge-format dataset root")
    p.add_argument("--experiment", default="bridge_base_action")
    p.add_argument("--gpus", default="1,2,4", help="comma list of GPU counts, run in this order")
    p.add_argument("--iters", type=int, default=60, help="steps per run")
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the averages")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per rank")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the runs' job folders under this output root (a temporary one otherwise); with "
        "trainer.profile_start=N each run's profile table and device-idle report are printed too",
    )
    p.add_argument("overrides", nargs="*", help="extra dotted overrides, e.g. trainer.batch_size=8")
    args = p.parse_args()
    if args.iters <= args.warmup:
        sys.exit("--iters must exceed --warmup")

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(prefix="worldsim-scaling-") as tmp:
        # a fresh folder per invocation under --keep: a job folder that exists would be resumed
        root = args.keep / time.strftime("scaling-%Y%m%d-%H%M%S") if args.keep else Path(tmp)
        for n in [int(g) for g in args.gpus.split(",")]:
            rows.append(run_one(args, n, root))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(
        f"\n{args.experiment} on {device}, {args.iters} steps ({args.warmup} warm-up), {' '.join(args.overrides)}"
    )
    print(
        "| GPUs | frames/s | tokens/s | MFU | TFLOP/s per GPU | peak memory per GPU | weak-scaling efficiency |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        eff = r["frames_per_s"] / (base["frames_per_s"] * r["gpus"] / base["gpus"])
        r["weak_scaling_efficiency"] = eff
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        tok = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "n/a"
        mem = f"{r['max_memory_gib']:.1f} GiB" if r["max_memory_gib"] else "n/a"
        print(
            f"| {r['gpus']} | {r['frames_per_s']:,.1f} | {tok} | {mfu} | {r['tflops_per_s_per_gpu']:.1f} "
            f"| {mem} | {100 * eff:.1f}% |"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"experiment": args.experiment, "device": device, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
