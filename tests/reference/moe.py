"""Mixture-of-experts FFN: v4-model.md §5."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Config
from .ops import Params, topk_indices


class MoE:
    def __init__(self, p: Params, prefix: str, cfg: Config, hash_layer: bool):
        self.p, self.prefix, self.cfg = p, prefix, cfg
        self.gate = p[f"{prefix}.gate.weight"]                       # [E, d]
        has_tid2eid = f"{prefix}.gate.tid2eid" in p
        if has_tid2eid != hash_layer:
            raise ValueError(f"{prefix}: hash layer is {hash_layer} but tid2eid presence is {has_tid2eid}")
        self.tid2eid = p[f"{prefix}.gate.tid2eid"] if hash_layer else None    # [V, k]
        self.bias = None if hash_layer else p[f"{prefix}.gate.bias"]          # [E]

    def route(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate: experts idx [S, k] and routing weights w [S, k].

        s = sqrt(softplus(x @ gate^T)); hash layers take idx = tid2eid[token] (no bias, no top-k),
        the others top-k of s + bias (bias for SELECTION only); w = s[idx] renormalised over
        the k chosen, times route_scale. No group-limited routing.
        """
        s = torch.sqrt(F.softplus(x @ self.gate.T))
        if self.tid2eid is not None:
            idx = self.tid2eid[tokens]
        else:
            idx = topk_indices(s + self.bias, self.cfg.n_activated_experts)
        w = s.gather(-1, idx)
        w = w / w.sum(-1, keepdim=True) * self.cfg.route_scale
        return idx, w

    def expert(self, prefix: str, x: torch.Tensor, w_route: torch.Tensor | None) -> torch.Tensor:
        """SwiGLU with the asymmetric clamp (gate <= L, up in [-L, L]); the routing weight
        multiplies the activation BEFORE w2. The current revision clamps the shared expert too."""
        g = self.p.linear(x, f"{prefix}.w1")
        u = self.p.linear(x, f"{prefix}.w3")
        L = self.cfg.swiglu_limit
        if L > 0:
            u = u.clamp(-L, L)
            g = g.clamp(max=L)
        h = F.silu(g) * u
        if w_route is not None:
            h = h * w_route[:, None]
        return self.p.linear(h, f"{prefix}.w2")

    def __call__(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        idx, w = self.route(x, tokens)
        y = torch.zeros_like(x)
        for e in idx.unique().tolist():
            rows, slot = torch.nonzero(idx == e, as_tuple=True)
            y[rows] += self.expert(f"{self.prefix}.experts.{e}", x[rows], w[rows, slot])
        return y + self.expert(f"{self.prefix}.shared_experts", x, None)
