"""One dynamics training step (forward + backward of the flow loss, bf16 autocast, compiled blocks,
flex-attention) on random latents, with flex-attention's default kernel tiles and with the training
forward tiles (`dynamics.FLEX_KERNEL_OPTIONS`), timed in the same process. The encoder, data loading
and optimiser are left out: this is the part the attention tiles change.

    python benchmarks/train_step_speed.py --preset base --batch 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from worldsim.models import dynamics
from worldsim.models.config import get_preset
from worldsim.models.flow import RectifiedFlow
from worldsim.models.world_model import WorldModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step_speed.json"))
    args = p.parse_args()
    cfg = get_preset(args.preset)
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = WorldModel(cfg).to(device)
    for block in model.dynamics.blocks:
        block.compile()
    flow = RectifiedFlow(cfg, attention="flex")
    z = torch.randn(
        args.batch, cfg.num_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device=device
    )
    a = torch.randn(args.batch, cfg.num_frames - 1, cfg.action_dim, device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = flow.loss(model.dynamics, z, a)
        loss.backward()

    rows, tuned = [], dynamics.FLEX_KERNEL_OPTIONS
    for name, options in (
        ("flex default tiles", None),
        ("training tiles", tuned),
        ("flex default tiles", None),
    ):
        dynamics.FLEX_KERNEL_OPTIONS = options
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        ms = sorted(times)[len(times) // 2]
        rows.append({"variant": name, "kernel_options": options, "ms_per_step": ms,
                     "windows_per_s": args.batch / ms * 1e3})  # fmt: skip
        print(
            f"{name:20} {options}  {ms:7.2f} ms per step  {args.batch / ms * 1e3:7.1f} windows/s", flush=True
        )
    dynamics.FLEX_KERNEL_OPTIONS = tuned
    result = {"preset": args.preset, "batch": args.batch, "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{torch.cuda.get_device_name()}; wrote {args.out}")


if __name__ == "__main__":
    main()
