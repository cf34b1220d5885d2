"""The DSpark draft head of DeepSeek-V4: dspark.md §1.1, §1.3, §5.2.

    draft = DSparkDraft(model)
    ring = draft.new_ring()
    draft.inject(ring, out.features, positions)        # every committed position, in order
    blk = draft.block(ring, anchor, p)                 # block [anchor, noise x (γ-1)] at p+1..p+γ
    drafts, logits = draft.greedy_chain(blk.base_logits, anchor)      # T = 0
    conf = draft.confidences(blk.x_post, anchor, drafts)              # raw logits

`p` is the last committed position (V4 start_pos); the anchor is the last sampled token, not yet
run through the target, placed at p+1. Slot k (1-based) predicts position p+1+k.

Choice (dspark.md §6 item 11, not settled by official code): with `fake_quant` on, the draft
stages fake-quantize their KV (ring and block) like the target's attention does, because the
stages are V4 blocks sharing the target's Attention code. The default exact mode has no fake-quant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import Attention, AttnInfo
from .mhc import HcWeights, hc_head
from .model import Block, V4Model
from .ops import rms_norm


@dataclass
class DraftRing:
    """Per-stage ring of `window` slots of injected context kv; slot = pos mod W (dspark.md §3.2)."""
    kv: torch.Tensor     # [n_stages, W, D]
    pos: torch.Tensor    # [W] position held by each slot (same for all stages), -1 = empty

    def clone(self) -> "DraftRing":
        return DraftRing(self.kv.clone(), self.pos.clone())

    def positions(self) -> list[int]:
        return sorted(int(t) for t in self.pos if t >= 0)


@dataclass
class DraftBlock:
    base_logits: torch.Tensor    # [γ, V] U_k, before the Markov bias
    x_post: torch.Tensor         # [γ, d] hc_head output of the last stage, BEFORE the final norm
    positions: torch.Tensor      # [γ] p+1 .. p+γ
    visible: torch.Tensor        # positions of every key the block queries saw (ring, then block)


class DSparkDraft:
    def __init__(self, model: V4Model):
        cfg, p = model.cfg, model.p
        n = model.ckpt.stage_count
        if n == 0 or cfg.dspark_block_size is None:
            raise ValueError("the checkpoint has no DSpark draft (no mtp.N tensors / dspark_* config keys)")
        self.model, self.cfg, self.p = model, cfg, p
        self.gamma = cfg.dspark_block_size
        self.noise = cfg.dspark_noise_token_id
        # dspark.md §1.3: stages are V4 blocks with ratio 0, never hash-routed.
        self.stages = [Block(p, f"mtp.{s}", cfg, cfg.compress_ratios[cfg.n_layers + s], hash_layer=False)
                       for s in range(n)]
        last = f"mtp.{n - 1}"
        self.hc_head_w = HcWeights(p[f"{last}.hc_head_fn"], p[f"{last}.hc_head_base"], p[f"{last}.hc_head_scale"])
        self.norm_w = p[f"{last}.norm.weight"]
        self.markov_w1 = p[f"{last}.markov_head.markov_w1.weight"]      # [V, r] embedding of the previous token
        self.markov_w2 = p[f"{last}.markov_head.markov_w2.weight"]      # [V, r] Linear r -> V
        self.conf_w = p[f"{last}.confidence_head.proj.weight"]          # [1, d + r], no bias

    def new_ring(self) -> DraftRing:
        c = self.cfg
        return DraftRing(torch.zeros(len(self.stages), c.window, c.head_dim, dtype=self.model.dtype),
                         torch.full((c.window,), -1, dtype=torch.long))

    # dspark.md §5.2 step 1 (G1 inject)
    def main_x(self, features: torch.Tensor) -> torch.Tensor:
        """main_x = main_norm(main_proj(features)), [n, d]; computed once, shared by all stages."""
        x = self.p.linear(features.to(self.model.dtype), "mtp.0.main_proj")
        return rms_norm(x, self.p["mtp.0.main_norm.weight"], self.cfg.norm_eps)

    def inject(self, ring: DraftRing, features: torch.Tensor, positions: torch.Tensor | list[int]) -> None:
        """Write committed positions into every stage's ring: ring_s[pos mod W] =
        RoPE_pos(kv_norm_s(wkv_s(main_x))) (θ = rope_theta, no YaRN). Of more than W rows only the
        last W survive. Call it for EVERY committed position (back-fill), in increasing order."""
        positions = torch.as_tensor(positions, dtype=torch.long)
        if len(positions) != len(features):
            raise ValueError("one position per feature row")
        held = ring.pos[ring.pos >= 0]
        if len(positions) == 0:
            return
        if (positions.diff() != 1).any() or (len(held) and int(held.max()) >= int(positions[0])):
            raise ValueError("inject positions must be consecutive and after those already held")
        x = self.main_x(features)
        W = self.cfg.window
        keep = slice(max(0, len(positions) - W), len(positions))
        slots = positions[keep] % W
        for s, stage in enumerate(self.stages):
            ring.kv[s, slots] = stage.attn.keys(x[keep], positions[keep])
        ring.pos[slots] = positions[keep]

    # dspark.md §1.3 steps 3-5 (G2 draft)
    def block(self, ring: DraftRing, anchor: int, p: int, gamma: int | None = None) -> DraftBlock:
        """One non-causal pass over [anchor, noise x (γ-1)] at positions p+1 .. p+γ."""
        gamma = gamma or self.gamma
        tokens = torch.tensor([anchor] + [self.noise] * (gamma - 1), dtype=torch.long)
        pos = torch.arange(p + 1, p + 1 + gamma)
        # Every block query sees the ring slots holding positions max(0, p+1-W) .. p, plus all γ
        # block keys (no causal mask). Block K/V are not written to the ring.
        in_window = (ring.pos >= max(0, p + 1 - self.cfg.window)) & (ring.pos <= p)
        visible = torch.cat([ring.pos[in_window], pos])

        h = self.model.embed(tokens)                      # target's embedding, hc copies
        for s, stage in enumerate(self.stages):
            ring_kv = ring.kv[s, in_window]

            def attend(attn: Attention, x: torch.Tensor,
                       ring_kv: torch.Tensor = ring_kv) -> tuple[torch.Tensor, AttnInfo]:
                q, _ = attn.queries(x, pos)               # weightless per-head RMS, RoPE θ rope_theta
                bank = torch.cat([ring_kv, attn.keys(x, pos)])
                everything = torch.ones(gamma, bank.shape[0], dtype=torch.bool)
                return attn.attend(q, bank, everything, pos), AttnInfo()   # sink, de-rotation, wo_a/wo_b

            h, _ = stage(h, tokens, attend)
        x_post = hc_head(h, self.hc_head_w, self.cfg)     # last stage's own hc_head
        logits = rms_norm(x_post, self.norm_w, self.cfg.norm_eps) @ self.p["head.weight"].T   # TARGET's head
        return DraftBlock(logits, x_post, pos, visible.sort().values)

    # dspark.md §1.1 step 3 (Markov) and step 4 (confidence)
    def _prev(self, anchor: int, drafts: torch.Tensor) -> torch.Tensor:
        """prev_1 = anchor, prev_{k+1} = x_k."""
        drafts = torch.as_tensor(drafts, dtype=torch.long)
        return torch.cat([torch.tensor([anchor]), drafts[:-1]])

    def markov_logits(self, base_logits: torch.Tensor, anchor: int, drafts: torch.Tensor | list[int]) -> torch.Tensor:
        """ℓ_k = U_k + W2 · W1[prev_k] given the chosen drafts: the logits each x_k was drawn from
        (q_k = softmax(ℓ_k / T)); rows [γ, V]."""
        prev = self._prev(anchor, drafts)
        return base_logits + self.markov_w1[prev] @ self.markov_w2.T

    def greedy_chain(self, base_logits: torch.Tensor, anchor: int) -> tuple[torch.Tensor, torch.Tensor]:
        """T = 0: left to right, x_k = argmax ℓ_k. Returns drafts [γ] and ℓ [γ, V]."""
        prev, drafts, rows = anchor, [], []
        for u in base_logits:
            ell = u + self.markov_w2 @ self.markov_w1[prev]
            prev = int(torch.argmax(ell))
            drafts.append(prev)
            rows.append(ell)
        return torch.tensor(drafts, dtype=torch.long), torch.stack(rows)

    def confidences(self, x_post: torch.Tensor, anchor: int, drafts: torch.Tensor | list[int]) -> torch.Tensor:
        """z_k = w · [x_post_k ; W1[prev_k]] on the PRE-norm x_post; raw logits (the consumer
        applies sigmoid and STS), no bias. [γ]."""
        prev = self._prev(anchor, drafts)
        return (torch.cat([x_post, self.markov_w1[prev]], dim=-1) @ self.conf_w.T).squeeze(-1)
