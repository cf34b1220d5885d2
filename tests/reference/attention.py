"""Attention for compress ratio 0 (SWA), 4 (CSA) and 128 (HCA): v4-model.md §4.

Two routes with the same maths:
- `forward_full`: the whole sequence from position 0. Every compressed entry is pooled in one
  batched pass and visibility is a mask built from the position rules of §4.4.
- `forward_incremental`: rows at positions start..start+n-1 given a `LayerCache`. The raw window
  lives in a ring of W slots (slot = pos mod W), the compressors advance their streaming state
  token by token (§4.5), and the indexer keeps its own key cache.
Comparing the two is the prefill == decode invariant of §8.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import Config
from .ops import (Params, fp4_fakequant, fp8_fakequant, hadamard, rms_norm, rope_frequencies, rope_tail,
                  sink_attention, topk_indices)

KV_FAKEQUANT_BLOCK = 64      # v4-model.md §7.3
INDEXER_FP4_BLOCK = 32


@dataclass
class CompressorState:
    """§4.5 streaming state: kv and score, each [coff*r, coff*Dc]; scores start at -inf."""
    kv: torch.Tensor
    score: torch.Tensor

    @classmethod
    def empty(cls, ratio: int, width: int, dtype: torch.dtype) -> "CompressorState":
        coff = 2 if ratio == 4 else 1
        return cls(torch.zeros(coff * ratio, coff * width, dtype=dtype),
                   torch.full((coff * ratio, coff * width), float("-inf"), dtype=dtype))

    def clone(self) -> "CompressorState":
        return CompressorState(self.kv.clone(), self.score.clone())


@dataclass
class LayerCache:
    """Per-layer decode state. Entry numbering of `comp` and `index_keys` is the entry id j."""
    ring: torch.Tensor                    # [W, D] raw kv, token t in slot t mod W
    ring_pos: torch.Tensor                # [W] position held by each slot, -1 = empty
    comp: torch.Tensor                    # [n_entries, D] compressed entries (ratio > 0)
    comp_state: CompressorState | None = None
    index_keys: torch.Tensor | None = None          # [n_entries, Di] (ratio 4)
    index_state: CompressorState | None = None

    def clone(self) -> "LayerCache":
        c = lambda s: None if s is None else s.clone()  # noqa: E731
        return LayerCache(self.ring.clone(), self.ring_pos.clone(), self.comp.clone(),
                          c(self.comp_state), c(self.index_keys), c(self.index_state))


@dataclass
class AttnInfo:
    """What each query row attended, for tests: raw positions and compressed entry ids."""
    raw: list[torch.Tensor] = field(default_factory=list)
    compressed: list[torch.Tensor] = field(default_factory=list)
    n_visible_compressed: list[int] = field(default_factory=list)

    @staticmethod
    def from_masks(raw_pos: torch.Tensor, raw_vis: torch.Tensor, comp_vis: torch.Tensor | None,
                   q_pos: torch.Tensor, ratio: int) -> "AttnInfo":
        info = AttnInfo()
        for i in range(len(q_pos)):
            info.raw.append(raw_pos[raw_vis[i]].sort().values)
            if comp_vis is None:
                info.compressed.append(torch.empty(0, dtype=torch.long))
            else:
                info.compressed.append(torch.nonzero(comp_vis[i]).flatten())
            info.n_visible_compressed.append(int(q_pos[i] + 1) // ratio if ratio else 0)
        return info


class Compressor:
    """§4.5: softmax-gated pooling of r tokens (8 for the overlapping r = 4) into one entry."""

    def __init__(self, p: Params, prefix: str, cfg: Config, ratio: int, width: int, rotate: bool,
                 theta: torch.Tensor):
        self.p, self.prefix, self.cfg = p, prefix, cfg
        self.ratio, self.width, self.rotate, self.theta = ratio, width, rotate, theta
        self.overlap = ratio == 4
        self.ape = p[f"{prefix}.ape"]                 # [r, coff*Dc], added to the gate scores only

    def _values_gates(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a_t = wkv(x_t), g_t = wgate(x_t) + ape[t mod r]: [S, coff*Dc] each."""
        a = self.p.linear(x, f"{self.prefix}.wkv")
        g = self.p.linear(x, f"{self.prefix}.wgate") + self.ape[pos % self.ratio]
        return a, g

    @staticmethod
    def _pool(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """[n, L, Dc] candidates -> [n, Dc]: softmax over the L tokens, separately per channel."""
        return (torch.softmax(g, dim=1) * a).sum(dim=1)

    def _finish(self, c: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Norm, RoPE at the block's first position j*r, then the rotate / fake-quant tail."""
        c = rms_norm(c, self.p[f"{self.prefix}.norm.weight"], self.cfg.norm_eps)
        c = rope_tail(c, j * self.ratio, self.theta, self.cfg.rope_dim)
        if self.rotate:                                  # indexer keys
            c = hadamard(c)
            if self.p.fake_quant:
                c = fp4_fakequant(c, INDEXER_FP4_BLOCK)
        elif self.p.fake_quant:                          # attention entries: nope dims only
            nope = self.width - self.cfg.rope_dim
            c = torch.cat([fp8_fakequant(c[:, :nope], KV_FAKEQUANT_BLOCK), c[:, nope:]], dim=-1)
        return c

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """All complete entries of a sequence that starts at position 0: [S // r, Dc]."""
        r, Dc = self.ratio, self.width
        n = x.shape[0] // r
        if n == 0:
            return x.new_zeros(0, Dc)
        a, g = self._values_gates(x[:n * r], torch.arange(n * r))
        a, g = a.view(n, r, -1), g.view(n, r, -1)
        if self.overlap:
            # Entry j pools half A of block j-1 and half B of block j (8 candidates per channel);
            # for j = 0 the previous block is absent (value 0, gate -inf).
            prev_a = torch.cat([a.new_zeros(1, r, Dc), a[:-1, :, :Dc]])
            prev_g = torch.cat([g.new_full((1, r, Dc), float("-inf")), g[:-1, :, :Dc]])
            a = torch.cat([prev_a, a[:, :, Dc:]], dim=1)
            g = torch.cat([prev_g, g[:, :, Dc:]], dim=1)
        return self._finish(self._pool(a, g), torch.arange(n))

    def stream(self, x: torch.Tensor, pos: torch.Tensor, state: CompressorState) -> torch.Tensor:
        """Feed tokens at `pos` (consecutive) through the state; return the entries they finish.

        Non-overlap: token t writes slot t mod r; when (t+1) mod r == 0, pool the r slots.
        Overlap: token t writes slot r + (t mod r); when (t+1) mod r == 0, pool
        [state[0:r, A-half] ; state[r:2r, B-half]], then shift state[0:r] = state[r:2r].
        """
        r, Dc = self.ratio, self.width
        a, g = self._values_gates(x, pos)
        pooled, ids = [], []
        for i, t in enumerate(pos.tolist()):
            slot = (r if self.overlap else 0) + t % r
            state.kv[slot], state.score[slot] = a[i], g[i]
            if (t + 1) % r:
                continue
            if self.overlap:
                va = torch.cat([state.kv[:r, :Dc], state.kv[r:, Dc:]])
                ga = torch.cat([state.score[:r, :Dc], state.score[r:, Dc:]])
                state.kv[:r], state.score[:r] = state.kv[r:].clone(), state.score[r:].clone()
            else:
                va, ga = state.kv.clone(), state.score.clone()
            pooled.append(self._pool(va[None], ga[None]))
            ids.append(t // r)
        if not pooled:
            return x.new_zeros(0, Dc)
        return self._finish(torch.cat(pooled), torch.tensor(ids))


class Indexer:
    """§4.7 lightning indexer: picks which compressed entries a CSA query attends."""

    def __init__(self, p: Params, prefix: str, cfg: Config, theta: torch.Tensor):
        self.p, self.prefix, self.cfg, self.theta = p, prefix, cfg, theta
        self.compressor = Compressor(p, f"{prefix}.compressor", cfg, 4, cfg.index_head_dim, True, theta)

    def queries(self, qr: torch.Tensor, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [S, Hi, Di] (roped, Hadamard-rotated) and head weights w [S, Hi]."""
        Hi, Di = self.cfg.index_n_heads, self.cfg.index_head_dim
        q = self.p.linear(qr, f"{self.prefix}.wq_b").unflatten(-1, (Hi, Di))
        q = rope_tail(q, pos, self.theta, self.cfg.rope_dim)
        q = hadamard(q)
        if self.p.fake_quant:
            q = fp4_fakequant(q, INDEXER_FP4_BLOCK)
        w = self.p.linear(x, f"{self.prefix}.weights_proj") * (Di ** -0.5 * Hi ** -0.5)
        return q, w

    @staticmethod
    def scores(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """score[t, j] = sum_h w[t, h] * relu(q[t, h] . K[j]): relu BEFORE the head weighting."""
        return torch.einsum("mh,mhn->mn", w, torch.relu(torch.einsum("mhd,nd->mhn", q, keys)))

    def select(self, scores: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        """[m, n] bool: the top min(index_topk, (t+1)//4) visible entries of each query t,
        by (score desc, entry id asc)."""
        m, n = scores.shape
        n_vis = (q_pos + 1) // 4
        visible = torch.arange(n)[None, :] < n_vis[:, None]
        k = n_vis.clamp(max=self.cfg.index_topk)
        order = topk_indices(scores.masked_fill(~visible, float("-inf")), n)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n).expand(m, n).contiguous())
        return rank < k[:, None]


class Attention:
    """One attention sublayer (§4.1-4.8); `ratio` picks SWA / CSA / HCA."""

    def __init__(self, p: Params, prefix: str, cfg: Config, ratio: int):
        self.p, self.prefix, self.cfg, self.ratio = p, prefix, cfg, ratio
        self.theta = rope_frequencies(cfg, ratio)
        self.sink = p[f"{prefix}.attn_sink"]
        self.compressor = Compressor(p, f"{prefix}.compressor", cfg, ratio, cfg.head_dim, False,
                                     self.theta) if ratio else None
        self.indexer = Indexer(p, f"{prefix}.indexer", cfg, self.theta) if ratio == 4 else None

    # §4.1 projections
    def queries(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [S, H, D] (weightless per-head RMS, roped) and qr = q_norm(wq_a(x)) for the indexer."""
        c = self.cfg
        qr = rms_norm(self.p.linear(x, f"{self.prefix}.wq_a"), self.p[f"{self.prefix}.q_norm.weight"], c.norm_eps)
        q = self.p.linear(qr, f"{self.prefix}.wq_b").unflatten(-1, (c.n_heads, c.head_dim))
        q = rms_norm(q, None, c.norm_eps)
        return rope_tail(q, pos, self.theta, c.rope_dim), qr

    def keys(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """kv [S, D]: one latent per token, used as both K and V."""
        c = self.cfg
        kv = rms_norm(self.p.linear(x, f"{self.prefix}.wkv"), self.p[f"{self.prefix}.kv_norm.weight"], c.norm_eps)
        kv = rope_tail(kv, pos, self.theta, c.rope_dim)
        if self.p.fake_quant:
            kv = torch.cat([fp8_fakequant(kv[:, :c.nope_dim], KV_FAKEQUANT_BLOCK), kv[:, c.nope_dim:]], dim=-1)
        return kv

    # §4.2 core + §4.3 output
    def attend(self, q: torch.Tensor, bank: torch.Tensor, visible: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        o = sink_attention(q, bank, visible, self.sink, c.head_dim ** -0.5)
        o = rope_tail(o, q_pos, self.theta, c.rope_dim, inverse=True)   # de-rotate with the QUERY position
        S, G = o.shape[0], c.o_groups
        o = o.reshape(S, G, c.n_heads * c.head_dim // G)                # heads of group g are contiguous
        wo_a = self.p[f"{self.prefix}.wo_a.weight"].view(G, c.o_lora_rank, -1)
        z = torch.einsum("sgi,goi->sgo", o, wo_a)
        return self.p.linear(z.flatten(1), f"{self.prefix}.wo_b")

    def _window(self, raw_pos: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        """§4.4: query t sees raw tokens max(0, t-W+1) .. t, itself included."""
        return (raw_pos[None, :] <= q_pos[:, None]) & (raw_pos[None, :] > q_pos[:, None] - self.cfg.window)

    def _compressed_visibility(self, n_entries: int, q_pos: torch.Tensor, x: torch.Tensor, qr: torch.Tensor,
                               index_keys: torch.Tensor | None) -> torch.Tensor:
        """§4.4: entry j is visible to query t iff j < (t+1)//r; CSA keeps the indexer's top-k."""
        if self.ratio == 4:
            q_idx, w_idx = self.indexer.queries(qr, x, q_pos)
            return self.indexer.select(Indexer.scores(q_idx, w_idx, index_keys), q_pos)
        return torch.arange(n_entries)[None, :] < ((q_pos + 1) // self.ratio)[:, None]

    def forward_full(self, x: torch.Tensor) -> tuple[torch.Tensor, AttnInfo]:
        """x [S, d] (attn_norm output) at positions 0..S-1."""
        pos = torch.arange(x.shape[0])
        q, qr = self.queries(x, pos)
        kv = self.keys(x, pos)
        raw_vis = self._window(pos, pos)
        bank, visible, comp_vis = kv, raw_vis, None
        if self.ratio:
            comp = self.compressor.full(x)
            index_keys = self.indexer.compressor.full(x) if self.ratio == 4 else None
            assert index_keys is None or index_keys.shape[0] == comp.shape[0]   # same entry numbering
            comp_vis = self._compressed_visibility(comp.shape[0], pos, x, qr, index_keys)
            bank, visible = torch.cat([kv, comp]), torch.cat([raw_vis, comp_vis], dim=1)
        out = self.attend(q, bank, visible, pos)
        return out, AttnInfo.from_masks(pos, raw_vis, comp_vis, pos, self.ratio)

    def new_cache(self, dtype: torch.dtype) -> LayerCache:
        c = self.cfg
        cache = LayerCache(ring=torch.zeros(c.window, c.head_dim, dtype=dtype),
                           ring_pos=torch.full((c.window,), -1, dtype=torch.long),
                           comp=torch.zeros(0, c.head_dim, dtype=dtype))
        if self.ratio:
            cache.comp_state = CompressorState.empty(self.ratio, c.head_dim, dtype)
        if self.ratio == 4:
            cache.index_keys = torch.zeros(0, c.index_head_dim, dtype=dtype)
            cache.index_state = CompressorState.empty(4, c.index_head_dim, dtype)
        return cache

    def forward_incremental(self, x: torch.Tensor, pos: torch.Tensor,
                            cache: LayerCache) -> tuple[torch.Tensor, AttnInfo]:
        """x [n, d] at consecutive positions `pos`, continuing `cache` (updated in place).

        The bank is [ring entries of earlier tokens | this chunk's raw kv | compressed entries],
        so a chunk longer than W still sees every window token. §4.8 order: raw kv, then the
        compressors (an entry finished by token t is visible to t itself), then attention.
        """
        q, qr = self.queries(x, pos)
        kv = self.keys(x, pos)
        held = cache.ring_pos >= 0
        if held.any() and int(cache.ring_pos[held].max()) >= int(pos[0]):
            raise ValueError("cache already holds positions at or after the chunk start")
        raw_bank = torch.cat([cache.ring[held], kv])
        raw_pos = torch.cat([cache.ring_pos[held], pos])
        raw_vis = self._window(raw_pos, pos)
        bank, visible, comp_vis = raw_bank, raw_vis, None
        if self.ratio:
            cache.comp = torch.cat([cache.comp, self.compressor.stream(x, pos, cache.comp_state)])
            if self.ratio == 4:
                new_keys = self.indexer.compressor.stream(x, pos, cache.index_state)
                cache.index_keys = torch.cat([cache.index_keys, new_keys])
                assert cache.index_keys.shape[0] == cache.comp.shape[0]       # same entry numbering
            comp_vis = self._compressed_visibility(cache.comp.shape[0], pos, x, qr, cache.index_keys)
            bank, visible = torch.cat([raw_bank, cache.comp]), torch.cat([raw_vis, comp_vis], dim=1)
        out = self.attend(q, bank, visible, pos)
        # The ring keeps the last W raw rows (slot = pos mod W).
        keep = slice(max(0, len(pos) - self.cfg.window), len(pos))
        slots = pos[keep] % self.cfg.window
        cache.ring[slots], cache.ring_pos[slots] = kv[keep], pos[keep]
        return out, AttnInfo.from_masks(raw_pos, raw_vis, comp_vis, pos, self.ratio)
