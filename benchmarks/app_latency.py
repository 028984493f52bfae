"""Per-step latency of the teleop app's step handler on the CPU (the number the UI shows as "step ms").

    python benchmarks/app_latency.py --checkpoint checkpoints/bridge_small     # the bundled model
    python benchmarks/app_latency.py --preset small                           # random weights, same cost
    taskset -c 0,1 python benchmarks/app_latency.py --preset small --no-page  # 2 cores, no gradio needed

Timings per button press, each over `--steps` presses after `--warmup`:
  model_step    `Rollout.step`: denoise + commit + decode of one frame (what the UI reports);
  handler       the whole Python handler: model step, 3-D path figure, upscaled frame, status line;
  page          handler + Gradio's postprocessing of its outputs (PNG frame into the cache, plot JSON),
                i.e. everything the server does per press except the network and the browser;
  session_step  (--no-page) `TeleopSession.step`: model step plus the session's bookkeeping.
The machine's load average is printed too: on a shared machine, other jobs inflate every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from worldsim.apps.teleop_session import TeleopSession, command_action  # noqa: E402
from worldsim.apps.teleop_starts import bundle_start  # noqa: E402
from worldsim.models.config import get_preset  # noqa: E402
from worldsim.models.world_model import WorldModel, load_shared  # noqa: E402

PRESSES = ["+x", "+y", "-x", "-y", "+z", "-z", "+yaw", "-yaw", "close", "open"]  # a loop back to the start


def random_bundle(preset: str, folder: Path) -> Path:
    """A bundle of `preset` with random weights (zero-initialised layers randomised too, so no
    layer is skipped by sparsity) and one random start frame: the same compute as a trained model."""
    torch.manual_seed(0)
    model = WorldModel(get_preset(preset))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)
    cfg = model.cfg
    image = np.random.default_rng(0).integers(0, 256, (1, cfg.height, cfg.width, 3), dtype=np.uint8)
    ee = np.array([[0.22, 0.0, 0.17, 0.0, 0.0, 0.0, 0.0]])
    return model.save_pretrained(folder / preset, start_frames={"images": image, "ee_states": ee})


def time_session(model: WorldModel, start_frames: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    """Model step and `TeleopSession.step` (clip, locks, bookkeeping) per press, without the page."""
    session = TeleopSession(model, bundle_start(start_frames, 0, (model.cfg.height, model.cfg.width)))
    model_ms, session_ms = [], []
    for i in range(warmup + steps):
        action = command_action(PRESSES[i % len(PRESSES)], 0.02, 0.1, session.gripper_open)
        began = time.perf_counter()
        session.step(action)
        if i >= warmup:
            session_ms.append(1000 * (time.perf_counter() - began))
            model_ms.append(session.latencies_ms[-1])
    return {"model_step": model_ms, "session_step": session_ms}


def time_page(checkpoint: Path, warmup: int, steps: int) -> dict[str, list[float]]:
    """Model step, the whole handler, and handler + Gradio's postprocessing, per press."""
    from worldsim.apps.teleop import TeleopApp, build_app

    demo = build_app(checkpoint)  # the page's components, for their postprocessing
    app = TeleopApp(load_shared(checkpoint), WorldModel.start_frames(checkpoint))
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    frame_box, truth_box, status_box, plot_box = (by_id[k] for k in ("frame", "truth", "status", "ee-plot"))
    session = app.load(None)[0]
    model_ms, handler_ms, page_ms = [], [], []
    for i in range(warmup + steps):
        began = time.perf_counter()
        _, frame, truth, status, figure = app.command(session, PRESSES[i % len(PRESSES)], 2.0, 0.1)
        handled = time.perf_counter()
        frame_box.postprocess(frame)
        truth_box.postprocess(truth.get("value"))
        status_box.postprocess(status)
        plot_box.postprocess(figure)
        done = time.perf_counter()
        if i >= warmup:
            model_ms.append(session.latencies_ms[-1])
            handler_ms.append(1000 * (handled - began))
            page_ms.append(1000 * (done - began))
    return {"model_step": model_ms, "handler": handler_ms, "page": page_ms}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "median_ms": round(float(np.median(a)), 1),
        "p90_ms": round(float(np.percentile(a, 90)), 1),
        "mean_ms": round(float(a.mean()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="model bundle folder or .safetensors")
    source.add_argument("--preset", help="random weights of a preset (tiny, small, ...)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads (the target is 2 cores)"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--no-page", action="store_true", help="time the session step only (no gradio/plotly)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_bundle(args.preset, Path(tmp))
        model = load_shared(checkpoint)
        if args.no_page:
            timings = time_session(model, WorldModel.start_frames(checkpoint), args.warmup, args.steps)
        else:
            timings = time_page(checkpoint, args.warmup, args.steps)
    cfg = model.cfg
    result = {
        "model": str(args.checkpoint or f"preset {args.preset} (random weights)"),
        "resolution": [cfg.height, cfg.width],
        "denoise_steps": cfg.denoise_steps,
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "threads": args.threads,
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "steps": args.steps,
        **{name: summary(ms) for name, ms in timings.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
