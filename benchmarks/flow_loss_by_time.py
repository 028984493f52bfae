"""The flow loss of one or more models at fixed flow times: where a lower validation loss comes from.

The trainer's validation loss averages the velocity MSE over flow times drawn like the training ones
(logit-normal, shifted by `train_time_shift`). The sampler visits only a few times (2 Euler steps at
time_shift 6: t = 1 and 0.857), so a model can lower the average where the sampler never looks. This
evaluates each model on the same validation windows with every predicted frame at one flow time t,
for each t, with the same noise for every model (a fixed seed per t):

    python benchmarks/flow_loss_by_time.py --checkpoints checkpoints/bridge_small OLD_BUNDLE --data DATA \\
        --windows 64 --times 1.0 0.857 0.7 0.5 0.3 0.1

Prints a table of MSE per t (and the ratio of each model to the first) and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from worldsim.eval.open_loop import make_dataset
from worldsim.models.flow import sampling_times
from worldsim.models.world_model import WorldModel
from worldsim.train.stages import StageModule


def windows(root: Path, split: str, model: WorldModel, count: int, batch: int) -> list[dict]:
    """`count` training-shaped windows spread evenly over the split, in batches of `batch`."""
    ds = make_dataset(str(root), split, model, num_frames=model.cfg.num_frames)
    if len(ds) == 0:
        raise SystemExit(f"{root}: no {model.cfg.num_frames}-frame windows in the {split} split")
    picks = np.linspace(0, len(ds) - 1, min(count, len(ds))).round().astype(int)
    items = [ds[int(i)] for i in picks]
    return [
        {k: torch.stack([it[k] for it in items[s : s + batch]]) for k in ("video", "action")}
        for s in range(0, len(items), batch)
    ]


@torch.no_grad()
def loss_at(stage: StageModule, batches: list[dict], t: float, seed: int) -> float:
    """Mean velocity MSE over the batches with every predicted frame at flow time t (context frames
    noised as in training), the noise drawn from `seed`."""
    stage.flow.sample_t = lambda shape, device: torch.full(shape, t, device=device)  # type: ignore[method-assign]
    torch.manual_seed(seed)
    total = 0.0
    for b in batches:
        _, logs = stage(b["video"], b["action"])
        total += float(logs["flow_mse"]) * len(b["video"])
    return total / sum(len(b["video"]) for b in batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="bundle folders or .safetensors files")
    p.add_argument("--data", type=Path, required=True, help="Bridge-format dataset root")
    p.add_argument("--split", default="val")
    p.add_argument("--windows", type=int, default=64, help="validation windows, spread over the split")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--times",
        type=float,
        nargs="+",
        default=None,
        help="flow times (default: the sampler's, then a grid)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/flow_loss_by_time.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    models = [WorldModel.from_pretrained(c) for c in args.checkpoints]
    cfg = models[0].cfg
    times = args.times
    if times is None:
        sampler = sampling_times(cfg.denoise_steps, cfg.time_shift)[:-1].tolist()
        times = [round(t, 4) for t in sampler] + [0.7, 0.5, 0.3, 0.1]
    batches = windows(args.data, args.split, models[0], args.windows, args.batch)
    rows = {}
    for path, model in zip(args.checkpoints, models):
        stage = StageModule(model, "action").eval()
        rows[path] = {t: loss_at(stage, batches, t, args.seed + i) for i, t in enumerate(times)}
        print(f"{path}: " + "  ".join(f"t={t:g} {v:.5f}" for t, v in rows[path].items()), flush=True)

    first = rows[args.checkpoints[0]]
    print(f"\nvelocity MSE at fixed flow times, {sum(len(b['video']) for b in batches)} {args.split} windows")
    print("| t | " + " | ".join(args.checkpoints) + " |")
    print("|---" * (len(args.checkpoints) + 1) + "|")
    for t in times:
        cells = [f"{rows[c][t]:.5f}" + ("" if c == args.checkpoints[0] else f" ({rows[c][t] / first[t]:.3f}x)")
                 for c in args.checkpoints]  # fmt: skip
        print(f"| {t:g} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"times": times, "windows": args.windows, "split": args.split, "mse": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
