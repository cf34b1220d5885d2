"""The DeepSeek-V4 target model: v4-model.md §3 (top level and blocks).

    model = V4Model.load(ckpt_dir)                  # float32, exact weights, no fake-quant
    out = model.forward(tokens)                     # positions 0..S-1, logits for every row
    cache = model.new_cache()
    out = model.forward_incremental(chunk, cache)   # positions cache.length.., any chunk size
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .attention import Attention, AttnInfo, LayerCache
from .config import Config
from .mhc import HcWeights, hc_head, hc_post, hc_pre
from .moe import MoE
from .ops import Params, rms_norm
from .weights import Checkpoint, load_checkpoint

# attend(attention module, x [S, d] after attn_norm) -> (output [S, d], info)
AttendFn = Callable[[Attention, torch.Tensor], tuple[torch.Tensor, AttnInfo]]


def _hc(p: Params, prefix: str) -> HcWeights:
    return HcWeights(p[f"{prefix}_fn"], p[f"{prefix}_base"], p[f"{prefix}_scale"])


class Block:
    """§3.1: one transformer layer with mHC; also a DSpark stage (ratio 0, dspark.md §1.3)."""

    def __init__(self, p: Params, prefix: str, cfg: Config, ratio: int, hash_layer: bool):
        self.p, self.prefix, self.cfg = p, prefix, cfg
        self.attn = Attention(p, f"{prefix}.attn", cfg, ratio)
        self.moe = MoE(p, f"{prefix}.ffn", cfg, hash_layer)
        self.hc_attn = _hc(p, f"{prefix}.hc_attn")
        self.hc_ffn = _hc(p, f"{prefix}.hc_ffn")

    def __call__(self, h: torch.Tensor, tokens: torch.Tensor, attend: AttendFn) -> tuple[torch.Tensor, AttnInfo]:
        """h [S, hc, d] -> [S, hc, d]; `attend` decides the attention route (full / cached / draft)."""
        eps = self.cfg.norm_eps
        res = h
        x, post, comb = hc_pre(h, self.hc_attn, self.cfg)
        x = rms_norm(x, self.p[f"{self.prefix}.attn_norm.weight"], eps)
        x, info = attend(self.attn, x)
        h = hc_post(x, res, post, comb)

        res = h
        x, post, comb = hc_pre(h, self.hc_ffn, self.cfg)
        x = rms_norm(x, self.p[f"{self.prefix}.ffn_norm.weight"], eps)
        h = hc_post(self.moe(x, tokens), res, post, comb)
        return h, info


@dataclass
class Cache:
    """Decode state of the whole target: one LayerCache per layer; `length` = next position."""
    layers: list[LayerCache]
    length: int = 0

    def clone(self) -> "Cache":
        """A deep copy: the snapshot to roll back to after a rejected verification."""
        return Cache([lc.clone() for lc in self.layers], self.length)


@dataclass
class ForwardOutput:
    logits: torch.Tensor            # [S, V] for every row
    features: torch.Tensor | None   # [S, n_taps * d] DSpark features (dspark.md §1.3), None if no taps
    hidden: torch.Tensor            # [S, hc, d] residual stream after the last layer (before hc_head)
    attn: list[AttnInfo]            # per target layer: what each row attended


class V4Model:
    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.float32, fake_quant: bool = False):
        """`fake_quant` turns on the official activation/KV/indexer fake quantisation
        (v4-model.md §7.3). Off (the default) is the exact mode the engine is compared against."""
        self.cfg = cfg = ckpt.config
        self.ckpt = ckpt
        self.dtype = dtype
        self.p = Params(ckpt.tensors, ckpt.quantized, dtype, fake_quant)
        self.layers = [Block(self.p, f"layers.{i}", cfg, cfg.compress_ratios[i], i < cfg.n_hash_layers)
                       for i in range(cfg.n_layers)]
        self.hc_head_w = HcWeights(self.p["hc_head_fn"], self.p["hc_head_base"], self.p["hc_head_scale"])
        bad = [i for i in cfg.dspark_target_layer_ids if not 0 <= i < cfg.n_layers]
        if bad:
            raise ValueError(f"dspark_target_layer_ids {bad} are not target layers")

    @classmethod
    def load(cls, ckpt_dir: str | Path, dtype: torch.dtype = torch.float32, fake_quant: bool = False) -> "V4Model":
        return cls(load_checkpoint(ckpt_dir), dtype, fake_quant)

    # §3 top level
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """e = embed[tokens], repeated into hc identical copies: [S, hc, d]."""
        e = self.p["embed.weight"][tokens]
        return e[:, None, :].expand(-1, self.cfg.hc_mult, -1).contiguous()

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """§3: hc_head -> final norm -> head, for every row."""
        y = hc_head(h, self.hc_head_w, self.cfg)
        y = rms_norm(y, self.p["norm.weight"], self.cfg.norm_eps)
        return y @ self.p["head.weight"].T

    def _run(self, tokens: torch.Tensor, attend_for: Callable[[int], AttendFn]) -> ForwardOutput:
        h = self.embed(tokens)
        taps: dict[int, torch.Tensor] = {}
        infos = []
        for i, layer in enumerate(self.layers):
            h, info = layer(h, tokens, attend_for(i))
            infos.append(info)
            if i in self.cfg.dspark_target_layer_ids:
                taps[i] = h.mean(dim=1)         # dspark.md §1.3: mean over the hc copies AFTER layer i
        ids = self.cfg.dspark_target_layer_ids
        features = torch.cat([taps[i] for i in ids], dim=-1) if ids else None
        return ForwardOutput(self.head(h), features, h, infos)

    def forward(self, tokens: Sequence[int] | torch.Tensor) -> ForwardOutput:
        """Full-sequence forward at positions 0..S-1."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if len(tokens) == 0:
            raise ValueError("forward needs at least one token")
        return self._run(tokens, lambda i: lambda attn, x: attn.forward_full(x))

    def new_cache(self) -> Cache:
        return Cache([layer.attn.new_cache(self.dtype) for layer in self.layers])

    def forward_incremental(self, tokens: Sequence[int] | torch.Tensor, cache: Cache,
                            start: int | None = None) -> ForwardOutput:
        """Rows at positions start..start+n-1 (start = cache.length) given `cache`, which is
        advanced in place. n = 1 is token-by-token decode, n > 1 chunked prefill."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if len(tokens) == 0:
            raise ValueError("forward_incremental needs at least one token")
        if start is not None and start != cache.length:
            raise ValueError(f"start {start} != cache length {cache.length}: roll back with a cache snapshot")
        pos = torch.arange(cache.length, cache.length + len(tokens))
        out = self._run(tokens, lambda i: lambda attn, x: attn.forward_incremental(x, pos, cache.layers[i]))
        cache.length += len(tokens)
        return out
