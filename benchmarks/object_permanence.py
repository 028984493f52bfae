"""Do objects survive in the learned world? The success model's state estimate on real vs generated frames.

Scripted BridgeSim episodes (all four tasks, expert / noisy / random / no-grasp policies) are recorded
with the sim's block positions and success labels; their actions are replayed open loop in the world
model from the same start frame. The bundled success model then estimates every block's position in
the real frames, in their tokenizer round trip (encode + decode: the best a generated frame can be) and
in the generated frames. On real frames its error is its own; the round trip adds what the tokenizer
loses (small coloured blocks); generated frames add what the dynamics get wrong. Success judged on
generated frames is compared with the sim's labels per frame and per episode (ever succeeded): this is
what the policy ranking's learned-world success rates rest on.

    python benchmarks/object_permanence.py --episodes 16 --steps 30 [--checkpoint PATH] [--device cpu]

Prints a table per horizon and writes benchmarks/results/object_permanence.json and a png strip of
real (top), reconstructed and generated (bottom) frames for the first episodes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from worldsim.data.dataset import resize_frames
from worldsim.eval.success import (
    classification_metrics,
    load_success_model,
    scene_state,
    tokenizer_round_trip,
)
from worldsim.models.world_model import WorldModel, best_device, inference_dtype, resolve_weights
from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.policies import make_policy
from worldsim.sim.tasks import TASKS

POLICIES = ("expert", "random", "noisy_0.5", "no_grasp")


def record(episodes: int, steps: int, seed: int, render: tuple[int, int], size: tuple[int, int], colours):
    """Scripted episodes: frames (E, T+1, H, W, 3) at the model size, actions (E, T, 7), block positions
    (E, T+1, K, 3), success labels (E, T+1), instructions."""
    sim = BridgeSim(resolution=render)
    frames, actions, positions, labels, instructions = [], [], [], [], []
    try:
        for e in range(episodes):
            rng = np.random.default_rng([seed, e])
            sim.reset(seed=int(rng.integers(2**31 - 1)), task=tuple(TASKS)[e % len(TASKS)])
            policy = make_policy(POLICIES[(e // len(TASKS)) % len(POLICIES)])
            policy.reset(sim, np.random.default_rng([seed, e, 1]))
            f, a, p, y = [sim.render()], [], [scene_state(sim, colours)[0]], [sim.is_success()]
            for _ in range(steps):
                a.append(policy.act(sim))
                sim.step(a[-1])
                f.append(sim.render())
                p.append(scene_state(sim, colours)[0])
                y.append(sim.is_success())
            frames.append(resize_frames(np.stack(f), size).transpose(0, 2, 3, 1))
            actions.append(np.stack(a))
            positions.append(np.stack(p))
            labels.append(y)
            instructions.append(sim.instruction)
    finally:
        sim.close()
    return np.stack(frames), np.stack(actions), np.stack(positions), np.array(labels), instructions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="bundle with success.safetensors (default: bundled)")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=500)
    p.add_argument("--render-resolution", default="256,320", help="H,W BridgeSim renders at (the data's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/object_permanence.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = best_device(args.device)
    model = WorldModel.from_pretrained(args.checkpoint, device=device, dtype=inference_dtype(device))
    success = load_success_model(resolve_weights(args.checkpoint).parent, device)
    size = (model.cfg.height, model.cfg.width)
    render = tuple(int(v) for v in args.render_resolution.split(","))
    E, T = args.episodes, args.steps
    real, actions, truth, labels, instructions = record(E, T, args.seed, render, size, success.cfg.colours)
    rollout = model.rollout(batch_size=E, seed=args.seed)
    rollout.reset(real[:, 0])
    generated = np.stack([real[:, 0]] + [rollout.step(actions[:, t]) for t in range(T)], axis=1)
    reconstructed = tokenizer_round_trip(model, real.reshape(-1, *size, 3)).reshape(real.shape)

    horizons = sorted({h for h in (1, 2, 5, 10, 20, 30, 60) if h <= T})
    result = {"episodes": E, "steps": T, "device": str(device), "horizons": horizons}
    for name, frames in (("real", real), ("reconstructed", reconstructed), ("generated", generated)):
        est = success.estimate(frames.reshape(-1, *size, 3))
        error = np.linalg.norm(est.positions.reshape(E, T + 1, -1, 3) - truth, axis=-1)[..., :-1] * 100
        start = est[np.repeat(np.arange(E) * (T + 1), T + 1)]  # each frame's episode start
        judged = success.judge(est, start, [text for text in instructions for _ in range(T + 1)]).reshape(
            E, T + 1
        )
        result[name] = {
            "block_error_cm_median_per_horizon": [
                round(float(np.nanmedian(error[:, h])), 2) for h in horizons
            ],
            "block_error_cm_median": round(float(np.nanmedian(error[:, 1:])), 2),
            "per_frame_vs_sim_labels": classification_metrics(judged[:, 1:].ravel(), labels[:, 1:].ravel()),
            "episodes_ever_success_agreement": round(float((judged.any(1) == labels.any(1)).mean()), 4),
            "episodes_ever_success": int(judged.any(1).sum()),
        }
    result["sim_episodes_ever_success"] = int(labels.any(1).sum())
    print(f"{E} episodes x {T} steps on {device}; sim: {result['sim_episodes_ever_success']} succeed")
    print(
        "block position error of the success model (median, cm) at horizon " + " / ".join(map(str, horizons))
    )
    for name in ("real", "reconstructed", "generated"):
        r = result[name]
        print(
            f"  {name:13s} {' / '.join(f'{v:.1f}' for v in r['block_error_cm_median_per_horizon'])}   "
            f"per-frame success balanced accuracy {r['per_frame_vs_sim_labels']['balanced_accuracy']:.2f}, "
            f"episodes judged successful {r['episodes_ever_success']} (agreement {r['episodes_ever_success_agreement']:.2f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    from PIL import Image

    cols = [t for t in (0, 1, 3, 6, 10, 20, 30) if t <= T]
    strip = np.concatenate(
        [
            np.concatenate(
                [np.concatenate([real[e, t], reconstructed[e, t], generated[e, t]], 0) for t in cols], 1
            )
            for e in range(min(E, 4))
        ],
        0,
    )
    Image.fromarray(strip).save(args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
