"""Numerical building blocks shared by the target model and the draft.

Each function names the section of v4-model.md it implements. Everything runs in the working
dtype (float32 by default); nothing here rounds to bf16.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from .config import Config


# v4-model.md §2: RMSNorm y = w * x / sqrt(mean(x^2) + eps); weight None = the weightless form.
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


# v4-model.md §4.6 RoPE / YaRN per layer type.
def rope_frequencies(cfg: Config, ratio: int) -> torch.Tensor:
    """theta_i, i = 0..R/2-1, in float64.

    ratio 0 (SWA layers, draft stages): base rope_theta, no YaRN.
    ratio > 0: base compress_rope_theta with the YaRN frequency blend (no mscale anywhere).
    """
    R = cfg.rope_dim
    base = cfg.rope_theta if ratio == 0 else cfg.compress_rope_theta
    i = torch.arange(R // 2, dtype=torch.float64)
    theta = base ** (-2.0 * i / R)
    if ratio == 0 or cfg.original_seq_len <= 0:
        return theta

    def corr(n_rot: float) -> float:
        return R * math.log(cfg.original_seq_len / (2 * math.pi * n_rot)) / (2 * math.log(base))

    low = max(math.floor(corr(cfg.beta_fast)), 0)
    high = min(math.ceil(corr(cfg.beta_slow)), R - 1)
    if high == low:
        high += 0.001
    ramp = ((i - low) / (high - low)).clamp(0.0, 1.0)
    return theta / cfg.rope_factor * ramp + theta * (1.0 - ramp)


def apply_rope(x: torch.Tensor, pos: torch.Tensor, theta: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by angle pos * theta_i (GPT-J / ggml mode 0).

    x: [S, ..., R]; pos: [S] absolute positions. `inverse` rotates by -angle (the conjugate).
    Angles are formed in float64 so long positions lose nothing before the cos/sin.
    """
    ang = pos.to(torch.float64)[:, None] * theta[None, :]                  # [S, R/2]
    ang = ang.reshape(ang.shape[:1] + (1,) * (x.dim() - 2) + ang.shape[1:])
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    if inverse:
        sin = -sin
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def rope_tail(x: torch.Tensor, pos: torch.Tensor, theta: torch.Tensor, rope_dim: int,
              inverse: bool = False) -> torch.Tensor:
    """v4-model.md §2: RoPE on the LAST rope_dim dims only; the first dims carry no position."""
    nope = x.shape[-1] - rope_dim
    return torch.cat([x[..., :nope], apply_rope(x[..., nope:], pos, theta, inverse)], dim=-1)


# v4-model.md §4.7: Sylvester-ordered Walsh-Hadamard, H1 = [1], H2n = [[Hn, Hn], [Hn, -Hn]].
@lru_cache(maxsize=None)
def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    if h.shape[0] != n:
        raise ValueError(f"Hadamard size {n} is not a power of two")
    return h


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """hadamard_transform(x, scale=n^-0.5) over the last dim (orthogonal, symmetric)."""
    n = x.shape[-1]
    return x @ (_sylvester(n) * n ** -0.5).to(x.dtype)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Deterministic top-k along the last dim, ordered by (score desc, index asc).

    v4-model.md §4.7: exact-zero ties are common in the indexer; torch.topk breaks them
    arbitrarily. A stable descending sort keeps equal scores in index order. Adding +0.0 turns
    -0.0 into +0.0 so the two zeros cannot order differently.
    """
    order = torch.sort(scores + 0.0, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


# v4-model.md §4.2 sparse attention core: MQA over one shared latent bank, K = V, sink logit.
def sink_attention(q: torch.Tensor, bank: torch.Tensor, visible: torch.Tensor, sink: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """q [m, H, D], bank [n, D] (key and value), visible [m, n] bool, sink [H] -> [m, H, D].

    softmax' denominator = sum_i exp(s_i) + exp(sink_h); the sink adds mass but no value.
    Written as a softmax over [scores | sink] with the sink column dropped afterwards, which is
    the same quantity with the max taken over the sink too.
    """
    m, H, _ = q.shape
    s = torch.einsum("mhd,nd->mhn", q, bank) * scale
    s = s.masked_fill(~visible[:, None, :], float("-inf"))
    s = torch.cat([s, sink.view(1, H, 1).expand(m, H, 1).to(s.dtype)], dim=-1)
    p = torch.softmax(s, dim=-1)[..., :-1]
    return torch.einsum("mhn,nd->mhd", p, bank)


# v4-model.md §7.3 fake quantisation (optional mode; off by default).
def _pow2_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """UE8M0 rounding of a block scale: 2^ceil(log2(amax / qmax)), computed exactly."""
    m, e = torch.frexp(amax / qmax)           # amax/qmax = m * 2^e, m in [0.5, 1)
    e = torch.where(m == 0.5, e - 1, e)        # exact powers of two keep their exponent
    return torch.ldexp(torch.ones_like(amax), e)


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """[..., n] -> [..., ceil(n/block), block]. A partial last block (e.g. q_lora_rank 192 with
    FP8 blocks of 128, which the official kernel would refuse) is padded with zeros, which do not
    change its amax and quantize to zero."""
    n = x.shape[-1]
    pad = -n % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.unflatten(-1, (-1, block)), n


def fp8_fakequant(x: torch.Tensor, block: int) -> torch.Tensor:
    """act_quant / fp8_fakequant: per `block` channels, amax = max(|x|, 1e-4),
    s = 2^ceil(log2(amax/448)), x -> e4m3(clamp(x/s, +-448)) * s."""
    xb, n = _blocks(x, block)
    s = _pow2_scale(xb.abs().amax(-1, keepdim=True).clamp_min(1e-4), 448.0)
    q = (xb / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(x.dtype)
    return (q * s).flatten(-2)[..., :n]


_E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def fp4_fakequant(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """fp4_fakequant: amax = max(|x|, 6*2^-126), s = 2^ceil(log2(amax/6)), round clamp(x/s, +-6)
    to the E2M1 grid with round-to-nearest-even (the even code wins a tie), times s."""
    xb, n = _blocks(x, block)
    s = _pow2_scale(xb.abs().amax(-1, keepdim=True).clamp_min(6 * 2.0 ** -126), 6.0)
    v = (xb / s).clamp(-6.0, 6.0)
    grid = torch.tensor(_E2M1_GRID, dtype=x.dtype)
    dist = (v.abs()[..., None] - grid).abs()
    nearest = dist == dist.amin(-1, keepdim=True)
    even = torch.tensor([2.0 if c % 2 == 0 else 1.0 for c in range(len(_E2M1_GRID))], dtype=x.dtype)
    code = (nearest.to(x.dtype) * even).argmax(-1)
    q = grid[code] * torch.sign(v)
    return (q * s).flatten(-2)[..., :n]


class Params:
    """Dequantized weights in the working dtype, with the linear op of v4-model.md §2.

    With `fake_quant`, a linear whose weight was FP8/FP4 on disk first fake-quantizes its input
    activation (act_quant, FP8 per 128 channels, v4-model.md §7.3).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], quantized: set[str], dtype: torch.dtype,
                 fake_quant: bool):
        self.t = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
        self.quantized = quantized
        self.dtype = dtype
        self.fake_quant = fake_quant

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.t[name]

    def __contains__(self, name: str) -> bool:
        return name in self.t

    def linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """y = x @ W^T for the tensor `{prefix}.weight`."""
        if self.fake_quant and prefix in self.quantized:
            x = fp8_fakequant(x, 128)
        return x @ self.t[f"{prefix}.weight"].T
