"""Per-world Gaussian noise streams, drawn for a whole batch in one computation on the model's device.

A vector env must reproduce N single envs, so each world's noise may depend on its own seed alone, not
on the batch it is in. torch has no batched generator seeded per row: a `torch.Generator` is one
stream, and one `randn` call per world (then a stack and a host-to-device copy) on every draw made,
with the success model, a 256-world env step on an H100 cost more than the model itself (36 ms for a
step's draws at 1,024 worlds; 0.39 ms here). Hence this hand-written counter-based generator, in the
spirit of Philox (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a world's
noise is a pure function of (its seed, its draw counter, the element index), computed for all worlds at
once with int64 tensor ops:

    key      = splitmix64(seed)                             # once, when the world is seeded
    draw_key = splitmix64(key + GAMMA * (counter + 1))      # counter: draws since the seed
    bits[j]  = splitmix64(draw_key + GAMMA * (j + 1))       # output j+1 of SplitMix64 seeded with draw_key
    z[2j], z[2j+1] = Box-Muller(the top 24 bits of each 32-bit half of bits[j])

`splitmix64` is the output function of SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014; constants of Vigna's splitmix64.c, which passes BigCrush). torch has
no usable uint64 arithmetic, so it runs on int64: multiplication and addition wrap modulo 2^64 exactly
as uint64 does, and the logical right shift is the arithmetic one with the sign-extended bits masked
off. Box-Muller runs in float32 on 24-bit uniforms, as torch.randn's float32 CPU kernel does (the
largest |z| is sqrt(2 * 24 ln 2) = 5.8).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from worldsim.models.cuda_graph import GraphedCall

_U64 = 1 << 64


def _int64(c: int) -> int:
    """The int64 with the bits of the uint64 constant c."""
    return c - _U64 if c >= 1 << 63 else c


GAMMA = _int64(0x9E3779B97F4A7C15)  # SplitMix64's increment: 2^64 / golden ratio, odd
_MIX1 = _int64(0xBF58476D1CE4E5B9)
_MIX2 = _int64(0x94D049BB133111EB)


def _check_seed(seed: object) -> int:
    try:
        s = operator.index(seed)  # ints and numpy integers; not floats or strings
    except TypeError:
        s = None
    if s is None or isinstance(seed, bool) or not -(1 << 63) <= s < _U64:
        raise ValueError(f"seeds must be integers in [-2**63, 2**64), got {seed!r}")
    return s


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits by 0 < k < 64 (torch's >> on int64 is arithmetic)."""
    return (x >> k).bitwise_and_((1 << (64 - k)) - 1)


def _mix_(x: torch.Tensor) -> torch.Tensor:
    """`splitmix64` in place (a quarter of the time on a CPU: no fresh buffer per op)."""
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        x ^= _shift_right(x, shift)
        x *= multiplier
    x ^= _shift_right(x, 31)
    return x


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function (a bijection of 64-bit words) on int64 tensors."""
    return _mix_(x.clone())


def normal(draw_keys: torch.Tensor, n: int) -> torch.Tensor:
    """(b, n) float32 standard normals; row i is a function of draw_keys[i] (int64 (b,)) alone."""
    pairs = (n + 1) // 2
    j = torch.arange(1, pairs + 1, device=draw_keys.device, dtype=torch.int64)
    bits = _mix_(draw_keys[:, None] + j * GAMMA)  # (b, pairs)
    # The top 24 bits of each 32-bit half: integers below 2^24 are exact in float32. u1 in (0, 1] keeps
    # the log finite.
    u1 = _shift_right(bits, 40).add_(1).to(torch.float32).mul_(2.0**-24)
    angle = (bits >> 8).bitwise_and_(0xFFFFFF).to(torch.float32).mul_(2.0**-24).mul_(2 * math.pi)
    radius = u1.log_().mul_(-2.0).sqrt_()
    z = torch.stack([torch.cos(angle).mul_(radius), angle.sin_().mul_(radius)], dim=-1)  # (b, pairs, 2)
    return z.reshape(len(draw_keys), 2 * pairs)[:, :n]


class WorldNoise:
    """One Gaussian noise stream per world of a batch: a 64-bit seed and a draw counter each, on `device`.

    `draw` gives every selected world its next draw, whichever other worlds are drawn with it: so a
    world's noise is the same in a batch of any size, and the same seed gives the same noise on a given
    device (the integer bits are the same on every device; float32 log/cos/sin may round differently)."""

    def __init__(self, batch_size: int, device: str | torch.device) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        # On CUDA a draw for every world is ~25 small kernels (~0.5 ms of launches, measured on an H100:
        # 1.1 ms for a rollout step's two draws, more than the rest of a batch-1 step's host work), so it
        # runs as one CUDA graph per (shape, dtype) that reads and advances keys/counters in place.
        self._graphs: dict[tuple[tuple[int, ...], torch.dtype], GraphedCall] = {}
        with torch.inference_mode():
            self.keys = splitmix64(torch.zeros(batch_size, dtype=torch.int64, device=self.device))  # seed 0
            self.counters = torch.zeros(batch_size, dtype=torch.int64, device=self.device)

    @torch.inference_mode()
    def seed(self, seeds: Sequence[int], idx: torch.Tensor | None = None) -> None:
        """Restart the streams of worlds `idx` (default all) from `seeds`: integers in [-2^63, 2^64), a
        negative one taken modulo 2^64 (the range `torch.Generator.manual_seed` accepts)."""
        idx = torch.arange(self.batch_size) if idx is None else idx
        if len(seeds) != len(idx):
            raise ValueError(f"{len(seeds)} seeds for {len(idx)} worlds")
        words = [_int64(_check_seed(s) % _U64) for s in seeds]
        idx = idx.to(self.device)
        self.keys[idx] = splitmix64(torch.tensor(words, dtype=torch.int64, device=self.device))
        self.counters[idx] = 0

    @torch.inference_mode()
    def draw(
        self,
        shape: tuple[int, ...],
        idx: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        graphed: bool = True,
    ) -> torch.Tensor:
        """The next draw of standard normals of `shape` for worlds `idx` (default all), as
        (len(idx), *shape) in `dtype`; advances those worlds' counters. On CUDA a draw for all worlds
        replays a graph of its own unless not `graphed` (inside another graph's capture)."""
        if idx is None and graphed and self.device.type == "cuda":
            graph = self._graphed(tuple(shape), dtype)
            return graph().clone()  # the graph's buffer: the next replay overwrites it
        return self._draw(shape, idx, dtype)

    def _graphed(self, shape: tuple[int, ...], dtype: torch.dtype) -> GraphedCall:
        key = (shape, dtype)
        if key not in self._graphs:
            counters = self.counters.clone()  # capturing runs the draw for real (warm-up): undo it
            self._graphs[key] = GraphedCall(lambda: self._draw(shape, None, dtype), [], device=self.device)
            self.counters.copy_(counters)
        return self._graphs[key]

    def _draw(self, shape: tuple[int, ...], idx: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        if idx is None:
            keys, counters = self.keys, self.counters
        else:
            idx = idx.to(self.device)
            keys, counters = self.keys[idx], self.counters[idx]
        draw_keys = splitmix64(keys + (counters + 1) * GAMMA)
        if idx is None:
            self.counters += 1
        else:
            self.counters[idx] += 1
        return normal(draw_keys, math.prod(shape)).reshape(len(draw_keys), *shape).to(dtype)
