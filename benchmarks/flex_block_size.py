"""Flex-attention's tiles in the training layout, on the GPU.

1. One attention call at a preset's training shape, forward and forward + backward, for mask block sizes
   (`training_block_mask`) and kernel tiles, against SDPA with the dense mask: which tiles suit a preset's
   frame length (mask blocks across a frame boundary evaluate the mask per element).
2. With `--step-batch N`: a whole dynamics training step (forward + backward of the flow loss, compiled
   blocks, bf16 autocast, random latents; the encoder, data loading and optimiser left out) with
   flex-attention's default tiles and with the training tiles (`trainer.flex_forward_tile`), default /
   training / default in one process; with `--step-variants`, any kernel options instead, in turn, twice
   (`--step-mode max-autotune-no-cudagraphs` lets inductor pick the tiles of every kernel itself).

    python benchmarks/flex_block_size.py --preset base --batch 8 --variants 128 128/64f 128/32f 128/64 --step-batch 8
    python benchmarks/flex_block_size.py --preset base --heads 6 --variants 128/64f \
        "128/BLOCK_M=64,BLOCK_N=64,USE_TMA=1" --step-batch 8 --step-variants "" 64f
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from worldsim.models import dynamics
from worldsim.models.config import get_preset
from worldsim.models.dynamics import (
    _compiled_flex_attention,
    frame_mask_to_tokens,
    training_block_mask,
    training_frame_mask,
)
from worldsim.models.flow import RectifiedFlow, training_sequence_frames
from worldsim.models.world_model import WorldModel
from worldsim.train.config import TrainerConfig


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median ms of fn() over `repeats` runs, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def kernel_options(tile: str) -> dict | None:
    """Flex-attention's kernel tiles: "" = its defaults, "64" = forward and backward tiles 64 (a mask block
    smaller than the default tiles needs tiles that divide it), "64f" = the forward's alone. A "+bMxN" suffix
    sets the backward's tiles too: BLOCK_M1 = M, BLOCK_N1 = N for its key/value pass, BLOCK_M2 = N,
    BLOCK_N2 = M for its query pass (e.g. "64f+b32x64")."""
    if not tile:
        return None
    # any of flex-attention's kernel options, e.g. "BLOCK_M=64,BLOCK_N=64,bwd_num_warps=8,USE_TMA=1"
    if "=" in tile:
        return {k: _option_value(v) for k, _, v in (item.partition("=") for item in tile.split(","))}
    forward, _, backward = tile.partition("+b")
    keys = (
        ("BLOCK_M", "BLOCK_N")
        if forward.endswith("f")
        else ("BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")
    )
    options = dict.fromkeys(keys, int(forward.removesuffix("f")))
    if backward:
        m, n = (int(v) for v in backward.split("x"))
        options.update(BLOCK_M1=m, BLOCK_N1=n, BLOCK_M2=n, BLOCK_N2=m)
    return options


def _option_value(text: str) -> int | bool:
    """A kernel option's value: true / false (any case) as bools, anything else as an int."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return int(text)


@functools.cache
def _autotuned_flex_attention():  # noqa: ANN202
    return torch.compile(flex_attention, dynamic=False, mode="max-autotune-no-cudagraphs")


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, n: int
) -> torch.Tensor:
    """The block-causal attention as dense SDPA calls, with no mask: a kernel that takes none (flash,
    cuDNN) can run each. Query frames are grouped by how many key frames they may attend; each group's key
    frames are gathered into one contiguous window per query frame (a copy; its backward sums the copies'
    gradients), the group folded into the batch. q, k, v (B, H, L, Dh) with L = frames x n; allowed
    (frames, frames) bool, query frame x key frame."""
    B, H, L, D = q.shape
    frames = L // n
    qf, kf, vf = (t.view(B, H, frames, n, D) for t in (q, k, v))
    groups: dict[int, list[tuple[int, list[int]]]] = {}
    for f in range(frames):
        keys = allowed[f].nonzero().flatten().tolist()
        groups.setdefault(len(keys), []).append((f, keys))
    pieces, order = [], []
    for m, members in groups.items():
        g = len(members)
        qi = torch.tensor([f for f, _ in members], device=q.device)
        ki = torch.tensor([keys for _, keys in members], device=q.device).flatten()  # (g * m,)
        out = F.scaled_dot_product_attention(  # the group folded into the batch: (B * g, H, tokens, Dh)
            qf[:, :, qi].transpose(1, 2).reshape(B * g, H, n, D),
            kf[:, :, ki].reshape(B, H, g, m * n, D).transpose(1, 2).reshape(B * g, H, m * n, D),
            vf[:, :, ki].reshape(B, H, g, m * n, D).transpose(1, 2).reshape(B * g, H, m * n, D),
        )  # (B * g, H, n, D)
        pieces.append(out.view(B, g, H, n, D))
        order += [f for f, _ in members]
    out = torch.cat(pieces, dim=1)[:, torch.tensor(order, device=q.device).argsort()]  # (B, frames, H, n, D)
    return out.permute(0, 2, 1, 3, 4).reshape(B, H, L, D)


def make_attend(cfg, allowed: torch.Tensor, block: int | None, tile: str, flex):  # noqa: ANN001, ANN201
    """(attend(q, k, v), % of tiles skipped): flex-attention with `block`-sized mask blocks and `tile`-sized
    kernel tiles (None: the defaults), or (block None) SDPA with the dense token mask."""
    n = cfg.tokens_per_frame
    if block == 0:  # dense SDPA calls over gathered key windows, the backend SDPA picks or `tile`'s
        attend = functools.partial(chunked_attention, allowed=allowed, n=n)
        if not tile:
            return attend, None
        backend = getattr(torch.nn.attention.SDPBackend, tile.upper())

        def with_backend(q, k, v):  # noqa: ANN001, ANN202
            with torch.nn.attention.sdpa_kernel(backend):
                return attend(q, k, v)

        return with_backend, None
    if block is None:
        dense = frame_mask_to_tokens(allowed, n)
        return functools.partial(F.scaled_dot_product_attention, attn_mask=dense), None
    mask = training_block_mask(cfg.num_frames, cfg.num_context_frames, n, allowed.device, block_size=block)
    if tile == "autotune":  # inductor times its own tile choices for the forward and the backward
        flex, tile = _autotuned_flex_attention(), ""
    return functools.partial(flex, block_mask=mask, kernel_options=kernel_options(tile)), float(
        mask.sparsity()
    )


def train_step_rows(
    cfg,
    batch: int,
    repeats: int,
    variants: list[str] | None = None,
    mode: str | None = None,  # noqa: ANN001
) -> list[dict]:
    """A dynamics training step with flex-attention's default tiles, the training tiles, then the defaults
    again (the repeat shows the drift of the machine); or with each of `variants` (kernel_options specs,
    "" = flex-attention's defaults) in turn, twice. `mode`: the blocks' torch.compile mode."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = WorldModel(cfg).to(device)
    for block in model.dynamics.blocks:
        block.compile(mode=mode)
    flow = RectifiedFlow(cfg, attention="flex")
    z = torch.randn(
        batch, cfg.num_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device=device
    )
    a = torch.randn(batch, cfg.num_frames - 1, cfg.action_dim, device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = flow.loss(model.dynamics, z, a)
        loss.backward()

    # the training tiles as the trainer sets them (by head size unless trainer.flex_forward_tile says)
    dynamics.set_flex_forward_tile(TrainerConfig().flex_forward_tile, cfg.dim // cfg.heads)
    rows, training = [], dynamics.FLEX_KERNEL_OPTIONS
    if variants is None:
        runs = [("default tiles", None), ("training tiles", training), ("default tiles", None)]
    else:
        runs = [(spec or "default tiles", kernel_options(spec)) for spec in variants] * 2
    try:
        for name, options in runs:
            dynamics.FLEX_KERNEL_OPTIONS = options  # read when the blocks are traced (a new value retraces)
            ms = timed(step, repeats, warmup=5)
            rows.append(
                {
                    "variant": name,
                    "kernel_options": options,
                    "ms_per_step": ms,
                    "windows_per_s": batch / ms * 1e3,
                }
            )
            print(
                f"train step, {name:15} {options}  {ms:7.2f} ms  {batch / ms * 1e3:7.1f} windows/s",
                flush=True,
            )
    finally:
        dynamics.FLEX_KERNEL_OPTIONS = training
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["128", "128/64f", "128/32f", "128/64"],
        help="MASK_BLOCK[/KERNEL_TILE] per flex variant: no tile = flex-attention's defaults, 64 = forward and "
        "backward tiles 64, 64f = the forward's alone, 64f+b32x64 = also the backward's, K=V,K=V = any kernel "
        "options, autotune = inductor's max-autotune choice (see kernel_options); chunked[/BACKEND] = the "
        "attention as dense SDPA calls over gathered key windows (chunked_attention; BACKEND e.g. "
        "cudnn_attention, flash_attention)",
    )
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-sdpa", action="store_true", help="skip the dense-mask SDPA reference")
    p.add_argument(
        "--step-batch", type=int, default=0, help="also time a dynamics training step at this batch"
    )
    p.add_argument(
        "--step-variants",
        nargs="+",
        default=None,
        help="kernel options of the training step's flex-attention, each timed twice in turn (the TILE part "
        'of --variants; "" = flex-attention\'s defaults); default: defaults / training tiles / defaults',
    )
    p.add_argument("--step-mode", default=None, help="the blocks' torch.compile mode in the training step")
    p.add_argument("--heads", type=int, default=0, help="attention heads instead of the preset's (head size)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/flex_block_size.json"))
    args = p.parse_args()
    cfg = get_preset(args.preset, **({"heads": args.heads} if args.heads else {}))
    # Every kernel-option variant retraces the compiled blocks and flex-attention: stay compiled.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    device = torch.device("cuda")
    n, frames = cfg.tokens_per_frame, training_sequence_frames(cfg.num_frames)
    length, head_dim = frames * n, cfg.dim // cfg.heads
    allowed = training_frame_mask(cfg.num_frames, cfg.num_context_frames, device)
    useful = (
        4 * args.batch * cfg.heads * head_dim * n * n * int(allowed.sum())
    )  # forward FLOPs, allowed pairs
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(
            args.batch, cfg.heads, length, head_dim, device=device, dtype=torch.bfloat16, generator=gen
        )
        for _ in range(3)
    )
    grad = torch.randn_like(q)
    flex = _compiled_flex_attention()
    rows, reference = [], None

    def run(attend):  # noqa: ANN001, ANN202
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out = attend(qq, kk, vv)
        out.backward(grad)
        return out, qq.grad

    variants = []
    for spec in args.variants:
        block, _, tile = spec.partition("/")
        if block == "chunked":  # "chunked" or e.g. "chunked/cudnn_attention": SDPA calls, no mask
            variants.append((f"sdpa chunks, {tile or 'any'} backend", 0, tile))
            continue
        variants.append((f"flex {block} mask, {tile or 'default'} tiles", int(block), tile))
    if not args.no_sdpa:
        variants.append(("sdpa, dense mask", None, ""))
    for name, block, tile in variants:
        attend, tiles = make_attend(cfg, allowed, block, tile, flex)
        try:
            fwd = timed(functools.partial(attend, q, k, v), args.repeats)
            both = timed(functools.partial(run, attend), args.repeats)
            out, dq = run(attend)
        except Exception as e:  # noqa: BLE001 (a tile choice the kernel cannot build: reported, not fatal)
            reason = str(e).strip().splitlines()[0][:300]
            rows.append({"variant": name, "block_size": block, "kernel_tile": tile, "failed": reason})
            print(f"{name:30} failed: {reason}", flush=True)
            continue
        if reference is None:
            reference = (out.float(), dq.float())
        err = max(
            float((out.float() - reference[0]).abs().max()), float((dq.float() - reference[1]).abs().max())
        )
        rows.append({"variant": name, "block_size": block, "kernel_tile": tile, "tiles_skipped_pct": tiles, "forward_ms": fwd,
                     "forward_backward_ms": both, "useful_tflops_forward": useful / fwd / 1e9,
                     "useful_tflops_fwd_bwd": 3.5 * useful / both / 1e9, "max_abs_diff_vs_first": err})  # fmt: skip
        r = rows[-1]
        print(f"{name:30} skipped {tiles if tiles is not None else '-':>6}%  fwd {fwd:7.2f} ms  fwd+bwd {both:7.2f} ms"
              f"  useful TFLOP/s fwd {r['useful_tflops_forward']:6.1f} fwd+bwd {r['useful_tflops_fwd_bwd']:6.1f}"
              f"  max diff {err:.3g}", flush=True)  # fmt: skip
    result = {"preset": args.preset, "batch": args.batch, "heads": cfg.heads, "head_dim": head_dim,
              "length": length, "tokens_per_frame": n, "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "rows": rows}  # fmt: skip
    if args.step_batch:
        result["train_step"] = train_step_rows(
            cfg, args.step_batch, args.repeats, args.step_variants, args.step_mode
        )
        result["step_mode"] = args.step_mode
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{torch.cuda.get_device_name()}; wrote {args.out}")


if __name__ == "__main__":
    main()
