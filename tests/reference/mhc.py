"""Manifold-constrained hyper-connections (mHC): v4-model.md §3.2-3.4.

The residual stream is h [S, hc, d]: hc copies of the hidden state. A sublayer reads one mixed
row (hc_pre), and its output is spread back over the copies (hc_post), the old copies flowing
only through the Sinkhorn-normalised matrix C.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Config


@dataclass
class HcWeights:
    fn: torch.Tensor      # [(2 + hc) * hc, hc * d] for a sublayer, [hc, hc * d] for hc_head
    base: torch.Tensor    # [(2 + hc) * hc] or [hc]
    scale: torch.Tensor   # [3] or [1]


def _mixes(h: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """§3.2 steps 1-3: mixes = (X @ fn^T) * r, r = 1/sqrt(mean(X^2) + eps) over all hc*d values."""
    X = h.flatten(-2)
    r = torch.rsqrt(X.pow(2).mean(-1, keepdim=True) + norm_eps)
    return (X @ fn.T) * r


def sinkhorn(c: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """§3.2 step 5 on c [..., hc(source j), hc(destination k)]: row softmax + eps, column
    normalisation, then (iters - 1) x (rows, columns). The last step normalises columns."""
    c = torch.softmax(c, dim=-1) + eps
    c = c / (c.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(-1, keepdim=True) + eps)
        c = c / (c.sum(-2, keepdim=True) + eps)
    return c


def hc_pre(h: torch.Tensor, w: HcWeights, cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """§3.2: returns x [S, d] = sum_j pre[j] h[:, j] (unnormalised streams), post [S, hc],
    comb [S, hc, hc] (row = source stream j, column = destination stream k)."""
    hc = cfg.hc_mult
    m = _mixes(h, w.fn, cfg.norm_eps)
    pre = torch.sigmoid(m[:, :hc] * w.scale[0] + w.base[:hc]) + cfg.hc_eps
    post = 2.0 * torch.sigmoid(m[:, hc:2 * hc] * w.scale[1] + w.base[hc:2 * hc])
    comb = (m[:, 2 * hc:] * w.scale[2] + w.base[2 * hc:]).unflatten(-1, (hc, hc))
    comb = sinkhorn(comb, cfg.hc_sinkhorn_iters, cfg.hc_eps)
    x = torch.einsum("sj,sjd->sd", pre, h)
    return x, post, comb


def hc_post(x: torch.Tensor, res: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """§3.3: h_new[k] = post[k] * x + sum_j C[j][k] * res[j]. No separate residual term."""
    return post[:, :, None] * x[:, None, :] + torch.einsum("sjk,sjd->skd", comb, res)


def hc_head(h: torch.Tensor, w: HcWeights, cfg: Config) -> torch.Tensor:
    """§3.4: y = sum_j (sigmoid(mixes[j] * scale[0] + base[j]) + eps) * h[j]; no Sinkhorn, no post."""
    m = _mixes(h, w.fn, cfg.norm_eps)
    pre = torch.sigmoid(m * w.scale[0] + w.base) + cfg.hc_eps
    return torch.einsum("sj,sjd->sd", pre, h)
