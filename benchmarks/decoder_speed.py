"""The tokenizer's decoder alone, timed by width: what a lighter decoder would save a frame.

    python benchmarks/decoder_speed.py                                   # the small preset's widths, CPU
    python benchmarks/decoder_speed.py --widths 128,64,32,16 64,32,16,8 --device cuda --batch 256

Random weights (the cost does not depend on them), channels-last latents and weights as `Rollout` decodes
them, `--calls` timed calls after 5 untimed; prints parameters, GFLOP a frame and the median / min time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import tyro

from worldsim.models.config import get_preset
from worldsim.models.tokenizer import Tokenizer
from worldsim.train.metrics import _count


@dataclass
class Args:
    preset: str = "small"
    widths: tuple[str, ...] = ("128,64,32,16", "96,48,24,12", "64,32,16,8")  # decoder_channels to time
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    calls: int = 40
    threads: int = 2  # torch CPU threads


def main(args: Args) -> list[dict]:
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    for text in args.widths:
        chans = tuple(int(c) for c in text.split(","))
        cfg = get_preset(args.preset, decoder_channels=chans)
        decoder = (
            Tokenizer(cfg).decoder.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
        )
        z = torch.randn(args.batch, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device=device)
        z = z.to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.device("meta"):
            flops = _count(lambda: Tokenizer(cfg).decoder(torch.zeros(1, *z.shape[1:])))  # noqa: B023
        times = []
        with torch.inference_mode():
            for i in range(5 + args.calls):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                decoder(z)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 5:
                    times.append(time.perf_counter() - t0)
        times.sort()
        row = {
            "decoder_channels": chans,
            "parameters": sum(p.numel() for p in decoder.parameters()),
            "gflop_per_frame": flops / 1e9,
            "median_ms": 1e3 * times[len(times) // 2],
            "min_ms": 1e3 * times[0],
        }
        rows.append(row)
        print(f"{str(chans):20} {row['parameters'] / 1e6:5.2f} M params {row['gflop_per_frame']:5.2f} GFLOP/frame "
              f"median {row['median_ms']:7.2f} ms  min {row['min_ms']:7.2f} ms  (batch {args.batch}, {device}, {args.dtype})")  # fmt: skip
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
