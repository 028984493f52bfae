"""Where a rollout step's GPU time goes: each part of `Rollout.advance` captured as its own CUDA graph.

    python benchmarks/step_breakdown.py --checkpoint checkpoints/bridge_small --batch-sizes 1 64 256 1024

For each batch size and variant (`--variants`: eager kernels, or `torch.compile`d as the envs'
`compile=True` does it; the decoder in channels-last, as a `Rollout` on CUDA runs it) it times, as graph replays (so Python launch overhead is gone and what is left
is kernel time): one denoising pass of the transformer with and without an attention mask (a mask
sends SDPA to a slower kernel than flash), the merged pass (the first denoising pass, over 2 frames:
it also commits the previous frame), the decoder (+ the uint8 conversion), the whole captured step,
and `Rollout.step` as a caller sees it (input copies, replay, output copies to the host). Medians of `--repeats` replays, CUDA-event timed. JSON to `--out`.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
from collections.abc import Callable

import numpy as np
import torch

from worldsim.models.dynamics import rope_tables
from worldsim.models.rollout import Rollout, _pair_mask
from worldsim.models.world_model import WorldModel, load_shared


def graph_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of one replay of fn captured as a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return float(np.median(times))


def wall_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


@torch.inference_mode()
def breakdown(
    model: WorldModel, batch: int, repeats: int, compiled: bool, denoise_steps: int | None = None
) -> dict:
    cfg, dyn = model.cfg, model.dynamics
    frames = np.random.default_rng(0).integers(0, 256, (batch, cfg.height, cfg.width, 3), dtype=np.uint8)
    actions = np.tile([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], (batch, 1))
    r = Rollout(model, batch_size=batch, seed=0, denoise_steps=denoise_steps)
    r.reset(frames)
    for _ in range(cfg.num_context_frames):  # fill the window: steady state
        r.step(actions)
    dev, dt = r.device, r.dtype
    a = torch.as_tensor(actions, device=dev, dtype=dt)[:, None]
    x = torch.randn(batch, 1, *r.latent_shape, device=dev, dtype=dt)
    t = torch.full((batch, 1), 0.5, device=dev)
    ones = torch.ones(batch, 1, device=dev)
    mask = torch.ones(batch, 1, 1, (r.window + 1) * r.N, dtype=torch.bool, device=dev)
    past = r._past_one  # the ring + one frame's scratch: a single-frame pass
    rope = r._rope(r.frame_index)
    index = torch.full((1,), r.frame_index, device=dev, dtype=torch.long)
    x2 = torch.randn(batch, 2, *r.latent_shape, device=dev, dtype=dt)
    t2, a2, ones2 = t.expand(batch, 2), a.expand(batch, 2, -1), ones.expand(batch, 2)
    rope2 = rope_tables(torch.cat([index - 1, index]), *dyn.grid, dyn.head_dim)
    mask2 = _pair_mask(None, (index - 1) % r.window, r.window, r.N)
    lat = x[:, 0].contiguous()
    row = {"batch": batch, "compiled": compiled, "denoise_steps": r.denoise_steps}
    row["pass_ms"] = graph_ms(
        lambda: dyn(x, t, a, None, None, action_mask=ones, past_kv=past, rope=rope), repeats
    )
    row["pass_masked_ms"] = graph_ms(
        lambda: dyn(x, t, a, None, mask, action_mask=ones, past_kv=past, rope=rope), repeats
    )
    row["merged_ms"] = graph_ms(
        lambda: dyn(
            x2, t2, a2, None, mask2, action_mask=ones2, past_kv=r._past_two, rope=rope2, velocity_from=1
        ),
        repeats,
    )
    row["decode_ms"] = graph_ms(lambda: Rollout._to_uint8(model.tokenizer.decode(lat)), repeats)
    saved = [b.clone() for b in r.cache_k + r.cache_v]
    r.enable_cuda_graph()
    g = r.cuda_graph
    row["advance_graph_ms"] = wall_ms(g.full.graph.replay, repeats)
    row["rollout_step_ms"] = wall_ms(lambda: r.step(actions), repeats)
    row["frames_per_s"] = batch / row["rollout_step_ms"] * 1e3
    for buf, old in zip(r.cache_k + r.cache_v, saved):
        buf.copy_(old)
    return row


def decoder_study(checkpoint: str, batch: int, repeats: int) -> list[dict]:
    """The decoder alone at one batch size: layouts, compile modes, cuDNN autotuning; then the top
    kernels of the fastest plain setting (compiled, channels-last) from the profiler."""
    rows = []
    for name, layout, mode, bench in [
        ("nchw", torch.contiguous_format, None, False),
        ("cl", torch.channels_last, None, False),
        ("cl+cudnn.benchmark", torch.channels_last, None, True),
        ("cl+compile", torch.channels_last, "default", False),
        ("cl+compile+cudnn.benchmark", torch.channels_last, "default", True),
        ("cl+compile max-autotune", torch.channels_last, "max-autotune-no-cudagraphs", False),
    ]:
        torch.backends.cudnn.benchmark = bench
        model = WorldModel.from_pretrained(checkpoint, device="cuda", dtype=torch.bfloat16)
        dec = model.tokenizer.decoder.to(memory_format=layout)
        fn = dec if mode is None else torch.compile(dec, mode=mode, dynamic=False)
        cfg = model.cfg
        z = torch.randn(batch, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device="cuda")
        z = z.to(torch.bfloat16)
        with torch.inference_mode():
            ms = graph_ms(lambda fn=fn, z=z: Rollout._to_uint8(fn(z)), repeats)
            rows.append({"variant": f"decoder {name}", "batch": batch, "decode_ms": ms})
            print(
                f"decoder {name:28s} B={batch:5d} {ms:.3f} ms = {batch / ms * 1e3:.0f} frames/s", flush=True
            )
            if name == "cl+compile":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        fn(z)
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)
    torch.backends.cudnn.benchmark = False
    return rows


def env_parts(checkpoint: str, repeats: int, compile: bool) -> dict:
    """A single BridgeWorld-v0 on CUDA: its whole step, and the parts it is made of, wall-clock."""
    from worldsim.envs.bridge_world import BridgeWorldEnv

    env = BridgeWorldEnv(checkpoint=checkpoint, device="cuda", compile=compile)
    env.reset(seed=0)
    action = np.array([0.01, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)
    for _ in range(10):
        env.step(action)
    w = env.worlds
    row = {"variant": "env" + ("+compile" if compile else ""), "batch": 1}
    row["env_step_ms"] = wall_ms(lambda: env.step(action), repeats)
    row["rollout_step_ms"] = wall_ms(lambda: w.rollout.step(action[None]), repeats)
    row["success_flags_ms"] = wall_ms(w.success_flags, repeats)
    row["check_actions_ms"] = wall_ms(lambda: w.check_actions(action[None], (1, 7)), repeats)
    print(
        f"{row['variant']:12s} B=    1  env.step {row['env_step_ms']:.3f} ms: rollout.step "
        f"{row['rollout_step_ms']:.3f}, success_flags {row['success_flags_ms']:.3f}, "
        f"check_actions {row['check_actions_ms']:.3f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/bridge_small")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256, 1024])
    parser.add_argument(
        "--variants", nargs="+", default=["eager", "compiled"],
        help="eager | compiled (as load_shared(compile=True))",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--env", action="store_true", help="also time a single env's step and its parts")
    parser.add_argument("--decoder-batch", type=int, default=0, help="also study the decoder at this batch")
    parser.add_argument(
        "--denoise-steps",
        nargs="+",
        type=int,
        default=[0],
        help="Euler steps per frame (0: the model's default)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64  # one compiled graph per batch size and call shape
    rows = []
    for variant in args.variants:
        compiled = variant == "compiled"
        if compiled:  # as the envs compile: the transformer, and the decoder with autotuned convolutions
            model = load_shared(args.checkpoint, "cuda", torch.bfloat16, compile=True)
        else:
            model = WorldModel.from_pretrained(args.checkpoint, device="cuda", dtype=torch.bfloat16)
        for batch, steps in itertools.product(args.batch_sizes, args.denoise_steps):
            try:
                row = breakdown(model, batch, args.repeats, compiled, steps or None)
            except torch.OutOfMemoryError:
                gc.collect()
                torch.cuda.empty_cache()
                print(f"{variant:12s} B={batch:5d}: out of memory", flush=True)
                continue
            gc.collect()  # the rollout and its captured graph point at each other
            torch.cuda.empty_cache()
            row["variant"] = variant
            rows.append(row)
            print(
                f"{variant:12s} B={batch:5d} S={row['denoise_steps']}  pass {row['pass_ms']:.3f} (masked {row['pass_masked_ms']:.3f})  "
                f"merged {row['merged_ms']:.3f}  decode {row['decode_ms']:.3f}  graph {row['advance_graph_ms']:.3f}  "
                f"step {row['rollout_step_ms']:.3f} ms = {row['frames_per_s']:.0f} frames/s",
                flush=True,
            )
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    if args.decoder_batch:
        rows += decoder_study(args.checkpoint, args.decoder_batch, args.repeats)
    if args.env:
        for compile in (False, True):
            rows.append(env_parts(args.checkpoint, args.repeats, compile))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
