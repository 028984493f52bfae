"""Do the blocks keep their colour through the tokenizer? Per palette colour, before and after the round trip.

A BridgeSim task names its block by colour ("put the green block in the bowl"), so a world model whose
tokenizer turns a green block dark grey cannot be judged on that task however good its dynamics. This
measures it directly: BridgeSim start frames (random scenes, resized to the model's resolution like the
training data) go through each checkpoint's tokenizer (encode, decode); at every block's projected centre
a 3x3 pixel patch is read in the rendered and in the round-tripped frame. Per colour it reports the median
RGB of both, their mean absolute difference (0-255), and how often the round-tripped patch is still
nearest to its own colour's median rendered RGB among the six (identification accuracy; on the renders
themselves it is the ceiling, below 1 only where the arm hides a block).

    python benchmarks/tokenizer_colours.py [--checkpoints A B ...] [--frames 60] [--device cpu]

Prints a table per checkpoint and writes benchmarks/results/tokenizer_colours.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from worldsim.data.dataset import resize_frames
from worldsim.eval.sim_pool import get_sim
from worldsim.eval.success import scene_state, tokenizer_round_trip
from worldsim.models.world_model import WorldModel, best_device, inference_dtype, resolve_weights
from worldsim.sim.scene import PALETTE
from worldsim.sim.tasks import TASKS

COLOURS = tuple(PALETTE)


def scenes(count: int, seed: int, render: tuple[int, int], size: tuple[int, int]):
    """`count` BridgeSim reset frames at `size` (H, W) and each block's (colour index, row, col) pixel."""
    sim = get_sim(render)
    frames, blocks = [], []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        sim.reset(seed=int(rng.integers(2**31 - 1)), task=tuple(TASKS)[int(rng.integers(len(TASKS)))])
        frames.append(resize_frames(sim.render()[None], size)[0].transpose(1, 2, 0))
        positions, _, xy = scene_state(sim, COLOURS)
        H, W = size
        for k in range(len(COLOURS)):
            if np.isfinite(positions[k]).all():
                col, row = (xy[k] + 1) / 2 * np.array([W - 1, H - 1])
                blocks.append((i, k, int(round(row)), int(round(col))))
    return np.stack(frames), np.array(blocks)


def patches(frames: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """(n, 3) mean RGB of the 3x3 patch at each block (clipped to the image)."""
    H, W = frames.shape[1:3]
    out = []
    for i, _, r, c in blocks:
        r0, c0 = min(max(r - 1, 0), H - 3), min(max(c - 1, 0), W - 3)
        out.append(frames[i, r0 : r0 + 3, c0 : c0 + 3].reshape(-1, 3).mean(0))
    return np.array(out)


def identification(rgb: np.ndarray, truth: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n,) bool: each patch's nearest reference colour (RGB distance) is its own."""
    d = np.linalg.norm(rgb[:, None, :] - reference[None], axis=-1)
    return d.argmin(axis=1) == truth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoints", nargs="+", default=[None], help="bundles or .safetensors (default: bundled)"
    )
    p.add_argument("--frames", type=int, default=60, help="BridgeSim scenes (each shows 3 of the 6 colours)")
    p.add_argument("--seed", type=int, default=3000)
    p.add_argument("--render-resolution", default="256,320")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tokenizer_colours.json"))
    args = p.parse_args()
    device = best_device(args.device)
    render = tuple(int(v) for v in args.render_resolution.split(","))
    results: dict = {"frames": args.frames, "seed": args.seed, "render_resolution": render, "checkpoints": {}}
    real = None
    for ckpt in args.checkpoints:
        file = resolve_weights(ckpt)
        model = WorldModel.from_pretrained(file, device=device, dtype=inference_dtype(device))
        if real is None:
            frames, blocks = scenes(args.frames, args.seed, render, (model.cfg.height, model.cfg.width))
            truth = blocks[:, 1]
            absent = [name for k, name in enumerate(COLOURS) if not (truth == k).any()]
            if absent:
                raise SystemExit(
                    f"--frames {args.frames}: no block of colour {', '.join(absent)} in these scenes; use more"
                )
            real = patches(frames, blocks)
            reference = np.array([np.median(real[truth == k], axis=0) for k in range(len(COLOURS))])
        with torch.inference_mode():
            trip = patches(tokenizer_round_trip(model, frames), blocks)
        rows = {}
        print(f"{file}: {len(blocks)} blocks in {args.frames} scenes")
        print(
            f"{'colour':8} {'n':>4} {'rendered RGB':>16} {'round trip RGB':>16} {'|diff|':>7} {'id real':>8} {'id trip':>8}"
        )
        for k, name in enumerate(COLOURS):
            sel = truth == k
            a, b = real[sel], trip[sel]
            row = {
                "blocks": int(sel.sum()),
                "rendered_rgb": np.median(a, axis=0).round(1).tolist(),
                "round_trip_rgb": np.median(b, axis=0).round(1).tolist(),
                "mean_abs_diff": round(float(np.abs(a - b).mean()), 2),
                "identified_rendered": round(float(identification(a, truth[sel], reference).mean()), 3),
                "identified_round_trip": round(float(identification(b, truth[sel], reference).mean()), 3),
            }
            rows[name] = row
            print(f"{name:8} {row['blocks']:>4} {str([round(v) for v in row['rendered_rgb']]):>16} "
                  f"{str([round(v) for v in row['round_trip_rgb']]):>16} {row['mean_abs_diff']:>7.1f} "
                  f"{row['identified_rendered']:>8.2f} {row['identified_round_trip']:>8.2f}")  # fmt: skip
        overall = float(identification(trip, truth, reference).mean())
        print(f"identified after the round trip: {overall:.2f} of blocks "
              f"(rendered: {identification(real, truth, reference).mean():.2f})\n")  # fmt: skip
        results["checkpoints"][str(file)] = {"colours": rows, "identified_round_trip": round(overall, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
