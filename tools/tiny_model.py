"""Batched training forward of the V4 target and its DSpark draft, for tools/train_tiny.py.

The maths is the PyTorch reference's (tests/reference/): the per-token parts (mHC, norms, MoE,
hc_head) ARE the reference's code (`Block`, `MoE`, `hc_pre/hc_post/hc_head`), run on rows
flattened from a batch. Only attention is rewritten, because the reference's attention handles
one sequence at a time: here it runs B sequences at once (sequence-first layout [S, B, ...]) and
the draft runs many anchor blocks at once, each at its own positions. tests/test_train_tiny.py
checks both against the reference on random weights (logits, features, draft logits).

Parameters live in a plain dict name -> float32 tensor with the checkpoint's (dequantized) names,
wrapped by the reference's `Params`, so gradients reach the dict's tensors directly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reference.config import Config  # noqa: E402
from tests.reference.mhc import HcWeights, hc_head  # noqa: E402
from tests.reference.model import Block  # noqa: E402
from tests.reference.ops import Params, hadamard, rms_norm, rope_frequencies, topk_indices  # noqa: E402


def rope_tail(x: torch.Tensor, pos: torch.Tensor, theta: torch.Tensor, rope_dim: int,
              inverse: bool = False) -> torch.Tensor:
    """The reference's rope_tail with positions per leading index: pos has the shape of
    x.shape[:pos.dim()] (e.g. [S, 1] for a batch of sequences, [γ, N] for anchor blocks)."""
    ang = pos.to(torch.float64)[..., None] * theta                       # [*pos, R/2]
    ang = ang.reshape(pos.shape + (1,) * (x.dim() - 1 - pos.dim()) + ang.shape[-1:])
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    if inverse:
        sin = -sin
    nope = x.shape[-1] - rope_dim
    pairs = x[..., nope:].unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rot = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return torch.cat([x[..., :nope], rot], dim=-1)


def sink_attention(q: torch.Tensor, bank: torch.Tensor, visible: torch.Tensor, sink: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """q [M, N, H, D], bank [K, N, D], visible broadcastable to [M, N, K] -> [M, N, H, D]
    (the reference's sink softmax, batched over N)."""
    M, N, H, _ = q.shape
    s = torch.einsum("mnhd,knd->mnhk", q, bank) * scale
    s = s.masked_fill(~visible[:, :, None, :], float("-inf"))
    s = torch.cat([s, sink.view(1, 1, H, 1).expand(M, N, H, 1).to(s.dtype)], dim=-1)
    p = torch.softmax(s, dim=-1)[..., :-1]
    return torch.einsum("mnhk,knd->mnhd", p, bank)


class TrainAttention:
    """One attention sublayer (ratio 0 / 4 / 128) over [S, B, d] or over draft blocks [γ, N, d]."""

    def __init__(self, p: Params, prefix: str, cfg: Config, ratio: int):
        self.p, self.prefix, self.cfg, self.ratio = p, prefix, cfg, ratio
        self.theta = rope_frequencies(cfg, ratio)
        # Filled by `full` on CSA layers: the indexer's distillation loss (see indexer_loss).
        self.index_loss: torch.Tensor | None = None

    def queries(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, a = self.cfg, self.prefix
        qr = rms_norm(self.p.linear(x, f"{a}.wq_a"), self.p[f"{a}.q_norm.weight"], c.norm_eps)
        q = self.p.linear(qr, f"{a}.wq_b").unflatten(-1, (c.n_heads, c.head_dim))
        return rope_tail(rms_norm(q, None, c.norm_eps), pos, self.theta, c.rope_dim), qr

    def keys(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        c, a = self.cfg, self.prefix
        kv = rms_norm(self.p.linear(x, f"{a}.wkv"), self.p[f"{a}.kv_norm.weight"], c.norm_eps)
        return rope_tail(kv, pos, self.theta, c.rope_dim)

    def attend(self, q: torch.Tensor, bank: torch.Tensor, visible: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        c, a = self.cfg, self.prefix
        o = sink_attention(q, bank, visible, self.p[f"{a}.attn_sink"], c.head_dim ** -0.5)
        o = rope_tail(o, q_pos, self.theta, c.rope_dim, inverse=True)
        M, N, G = o.shape[0], o.shape[1], c.o_groups
        o = o.reshape(M, N, G, c.n_heads * c.head_dim // G)
        wo_a = self.p[f"{a}.wo_a.weight"].view(G, c.o_lora_rank, -1)
        z = torch.einsum("mngi,goi->mngo", o, wo_a)
        return self.p.linear(z.flatten(2), f"{a}.wo_b")

    def _compress(self, x: torch.Tensor, prefix: str, ratio: int, width: int, rotate: bool) -> torch.Tensor:
        """The reference's Compressor.full for x [S, B, d] -> entries [n, B, width]."""
        r, S = ratio, x.shape[0]
        n = S // r
        if n == 0:
            return x.new_zeros(0, x.shape[1], width)
        xs = x[:n * r]
        a = self.p.linear(xs, f"{prefix}.wkv")
        g = self.p.linear(xs, f"{prefix}.wgate") + self.p[f"{prefix}.ape"][torch.arange(n * r) % r][:, None, :]
        a, g = a.unflatten(0, (n, r)), g.unflatten(0, (n, r))                # [n, r, B, coff*width]
        if r == 4:
            prev_a = torch.cat([torch.zeros_like(a[:1, :, :, :width]), a[:-1, :, :, :width]])
            prev_g = torch.cat([torch.full_like(g[:1, :, :, :width], float("-inf")), g[:-1, :, :, :width]])
            a = torch.cat([prev_a, a[:, :, :, width:]], dim=1)
            g = torch.cat([prev_g, g[:, :, :, width:]], dim=1)
        c = (torch.softmax(g, dim=1) * a).sum(dim=1)                          # [n, B, width]
        c = rms_norm(c, self.p[f"{prefix}.norm.weight"], self.cfg.norm_eps)
        c = rope_tail(c, (torch.arange(n) * r)[:, None], self.theta, self.cfg.rope_dim)
        return hadamard(c) if rotate else c

    def _index_select(self, x: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor, pos: torch.Tensor,
                      q: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        """CSA visibility [S, B, n]: the indexer's top-k of the visible entries (reference
        Indexer.select, batched). Also sets `index_loss` (indexer distillation)."""
        c, i = self.cfg, f"{self.prefix}.indexer"
        Hi, Di = c.index_n_heads, c.index_head_dim
        qi = self.p.linear(qr, f"{i}.wq_b").unflatten(-1, (Hi, Di))
        qi = hadamard(rope_tail(qi, pos, self.theta, c.rope_dim))
        w = self.p.linear(x, f"{i}.weights_proj") * (Di ** -0.5 * Hi ** -0.5)
        scores = torch.einsum("sbh,sbhn->sbn", w, torch.relu(torch.einsum("sbhd,nbd->sbhn", qi, keys)))
        S, n = pos.shape[0], keys.shape[0]
        n_vis = (pos[:, 0] + 1) // 4                                          # [S]
        visible = torch.arange(n)[None, :] < n_vis[:, None]                  # [S, n]
        k = n_vis.clamp(max=c.index_topk)
        order = topk_indices(scores.detach().masked_fill(~visible[:, None, :], float("-inf")), n)
        ranks = torch.arange(n).expand(order.shape).contiguous()
        rank = torch.empty_like(order).scatter_(-1, order, ranks)
        self.index_loss = self._indexer_loss(scores, visible, q, comp)
        return rank < k[:, None, None]

    def _indexer_loss(self, scores: torch.Tensor, visible: torch.Tensor, q: torch.Tensor,
                      comp: torch.Tensor) -> torch.Tensor:
        """Top-k selection passes no gradient to the indexer, so (as DeepSeek-V3.2 trains its
        lightning indexer) it learns by KL to the main attention's distribution over ALL visible
        compressed entries, summed over heads. The target is detached; the indexer's inputs are
        detached by the caller, so this loss trains only the indexer."""
        first = int(visible.any(-1).int().argmax()) if visible.any() else visible.shape[0]
        if first == visible.shape[0]:                                         # no query sees an entry yet
            return scores.new_zeros(())
        vis, scores, q = visible[first:], scores[first:], q[first:]          # rows with >= 1 entry
        with torch.no_grad():
            att = torch.einsum("sbhd,nbd->sbhn", q, comp) * self.cfg.head_dim ** -0.5
            att = torch.softmax(att.masked_fill(~vis[:, None, None, :], float("-inf")), dim=-1).sum(2)
            target = att / att.sum(-1, keepdim=True)
        logp = torch.log_softmax(scores.masked_fill(~vis[:, None, :], -1e9), dim=-1)
        return (target * (torch.log(target.clamp_min(1e-30)) - logp)).sum(-1).mean()

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """x [S, B, d] (attn_norm output) at positions 0..S-1 -> [S, B, d]."""
        c, S = self.cfg, x.shape[0]
        pos = torch.arange(S)[:, None]
        q, qr = self.queries(x, pos)
        kv = self.keys(x, pos)
        t = torch.arange(S)
        raw_vis = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - c.window)   # [S, S]
        bank, visible = kv, raw_vis[:, None, :]
        if self.ratio:
            comp = self._compress(x, f"{self.prefix}.compressor", self.ratio, c.head_dim, False)
            n = comp.shape[0]
            if self.ratio == 4:
                keys = self._compress(x.detach(), f"{self.prefix}.indexer.compressor", 4, c.index_head_dim, True)
                comp_vis = self._index_select(x.detach(), qr.detach(), keys, pos, q.detach(), comp.detach())
            else:
                comp_vis = (torch.arange(n)[None, :] < ((t + 1) // self.ratio)[:, None])[:, None, :]
            B = x.shape[1]
            bank = torch.cat([kv, comp])
            visible = torch.cat([raw_vis[:, None, :].expand(S, B, S), comp_vis.expand(S, B, n)], dim=-1)
        return self.attend(q, bank, visible, pos)


def _rows(h: torch.Tensor) -> torch.Tensor:
    return h.flatten(0, 1)


@dataclass
class TargetOutput:
    logits: torch.Tensor         # [S, B, V]
    features: torch.Tensor       # [S, B, n_taps * d] (empty last dim without taps)
    index_loss: torch.Tensor     # mean indexer KL over the CSA layers (0 without any)


class TrainTarget:
    """The V4 target over a batch, sequence-first: tokens [S, B] at positions 0..S-1."""

    def __init__(self, params: dict[str, torch.Tensor], cfg: Config):
        self.cfg = cfg
        self.p = Params(params, set(), torch.float32, False)
        self.blocks = [Block(self.p, f"layers.{i}", cfg, cfg.compress_ratios[i], i < cfg.n_hash_layers)
                       for i in range(cfg.n_layers)]
        self.attn = [TrainAttention(self.p, f"layers.{i}.attn", cfg, cfg.compress_ratios[i])
                     for i in range(cfg.n_layers)]
        self.hc_head_w = HcWeights(self.p["hc_head_fn"], self.p["hc_head_base"], self.p["hc_head_scale"])

    def forward(self, tokens: torch.Tensor) -> TargetOutput:
        cfg = self.cfg
        S, B = tokens.shape
        flat = tokens.reshape(-1)
        e = self.p["embed.weight"][flat]
        h = e[:, None, :].expand(-1, cfg.hc_mult, -1)                        # rows [S*B, hc, d]
        taps = {}
        for i, (block, attn) in enumerate(zip(self.blocks, self.attn)):
            def attend(_ref_attn, x, attn=attn):
                return _rows(attn.full(x.view(S, B, -1))), None
            h, _ = block(h, flat, attend)
            if i in cfg.dspark_target_layer_ids:
                taps[i] = h.mean(dim=1)
        y = rms_norm(hc_head(h, self.hc_head_w, cfg), self.p["norm.weight"], cfg.norm_eps)
        logits = (y @ self.p["head.weight"].T).view(S, B, -1)
        ids = cfg.dspark_target_layer_ids
        features = torch.cat([taps[i] for i in ids], dim=-1).view(S, B, -1) if ids else e.new_zeros(S, B, 0)
        losses = [a.index_loss for a in self.attn if a.ratio == 4 and a.index_loss is not None]
        index_loss = torch.stack(losses).mean() if losses else e.new_zeros(())
        return TargetOutput(logits, features, index_loss)


@dataclass
class DraftOutput:
    base_logits: torch.Tensor    # [γ, N, V] U_k before the Markov bias
    x_post: torch.Tensor         # [γ, N, d] last stage's hc_head output (pre-norm)


class TrainDraft:
    """DSpark stages over N anchor blocks at once (reference DSparkDraft.inject + block).

    Anchor n sits at position A_n (= p + 1) of sequence b_n: its block is [anchor, noise x (γ-1)]
    at A_n .. A_n+γ-1 and every block query sees the injected context kv of positions
    max(0, A_n - W) .. A_n - 1 (the ring after back-filling every committed position) plus the
    whole block (no causal mask).
    """

    def __init__(self, params: dict[str, torch.Tensor], cfg: Config):
        self.cfg = cfg
        self.p = Params(params, set(), torch.float32, False)
        self.n_stages = cfg.n_stages
        self.stages = [Block(self.p, f"mtp.{s}", cfg, 0, hash_layer=False) for s in range(self.n_stages)]
        self.attn = [TrainAttention(self.p, f"mtp.{s}.attn", cfg, 0) for s in range(self.n_stages)]
        last = f"mtp.{self.n_stages - 1}"
        self.last = last
        self.hc_head_w = HcWeights(self.p[f"{last}.hc_head_fn"], self.p[f"{last}.hc_head_base"],
                                   self.p[f"{last}.hc_head_scale"])

    def forward(self, features: torch.Tensor, anchors: torch.Tensor, seq: torch.Tensor,
                anchor_tokens: torch.Tensor, head: torch.Tensor, embed: torch.Tensor) -> DraftOutput:
        """features [S, B, n_taps*d] of the (frozen) target; anchors [N] positions A_n, seq [N]
        sequence index b_n, anchor_tokens [N]; head/embed: the target's (frozen) matrices."""
        cfg, W = self.cfg, self.cfg.window
        gamma, N = cfg.dspark_block_size, anchors.shape[0]
        S = features.shape[0]
        main_x = rms_norm(self.p.linear(features, "mtp.0.main_proj"), self.p["mtp.0.main_norm.weight"], cfg.norm_eps)
        ctx_pos = anchors[None, :] - W + torch.arange(W)[:, None]            # [W, N]
        ctx_ok = ctx_pos >= 0
        ctx_x = main_x[ctx_pos.clamp(0, S - 1), seq[None, :]]               # [W, N, d]
        blk_pos = anchors[None, :] + torch.arange(gamma)[:, None]           # [γ, N]
        tokens = torch.full((gamma, N), cfg.dspark_noise_token_id, dtype=torch.long)
        tokens[0] = anchor_tokens
        flat = tokens.reshape(-1)
        h = embed[flat][:, None, :].expand(-1, cfg.hc_mult, -1)
        visible = torch.cat([ctx_ok, torch.ones(gamma, N, dtype=torch.bool)])[None].expand(gamma, -1, -1)
        visible = visible.permute(0, 2, 1)                                   # [γ, N, W+γ]
        for stage, attn in zip(self.stages, self.attn):
            ring_kv = attn.keys(ctx_x, ctx_pos)                              # [W, N, D]

            def attend(_ref_attn, x, attn=attn, ring_kv=ring_kv):
                xb = x.view(gamma, N, -1)
                q, _ = attn.queries(xb, blk_pos)
                bank = torch.cat([ring_kv, attn.keys(xb, blk_pos)])
                return _rows(attn.attend(q, bank, visible, blk_pos)), None
            h, _ = stage(h, flat, attend)
        x_post = hc_head(h, self.hc_head_w, cfg)
        logits = rms_norm(x_post, self.p[f"{self.last}.norm.weight"], cfg.norm_eps) @ head.T
        return DraftOutput(logits.view(gamma, N, -1), x_post.view(gamma, N, -1))

    def markov_bias(self, prev: torch.Tensor) -> torch.Tensor:
        """W2 · W1[prev] for prev token ids of any shape -> [..., V]."""
        w1 = self.p[f"{self.last}.markov_head.markov_w1.weight"]
        w2 = self.p[f"{self.last}.markov_head.markov_w2.weight"]
        return w1[prev] @ w2.T

    def confidence(self, x_post: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Raw confidence logits z = w · [x_post ; W1[prev]] (no bias)."""
        w1 = self.p[f"{self.last}.markov_head.markov_w1.weight"]
        w = self.p[f"{self.last}.confidence_head.proj.weight"]
        return (torch.cat([x_post, w1[prev]], dim=-1) @ w.T).squeeze(-1)


def dspark_loss(draft: TrainDraft, out: DraftOutput, prev: torch.Tensor, labels: torch.Tensor,
                target_logits: torch.Tensor, decay: float = 4.0,
                weights: tuple[float, float, float] = (0.1, 0.9, 1.0)) -> dict[str, torch.Tensor]:
    """dspark.md §1.2 training objective on N blocks: prev/labels [γ, N] (prev_1 = anchor,
    prev_k = the true token before slot k), target_logits [γ, N, V] (the target's logits for the
    same positions, detached). Loss = Σ_k w_k (0.1·CE + 0.9·|p_d − p_t|₁ + BCE(σ(z_k), 1 − ½|p_d − p_t|₁))
    with w_k = exp(−(k−1)/decay), normalised over the slots."""
    gamma = labels.shape[0]
    ell = out.base_logits + draft.markov_bias(prev)
    logp_d = torch.log_softmax(ell, dim=-1)
    p_t = torch.softmax(target_logits, dim=-1)
    ce = F.nll_loss(logp_d.flatten(0, 1), labels.reshape(-1), reduction="none").view(gamma, -1)
    l1 = (logp_d.exp() - p_t).abs().sum(-1)
    z = draft.confidence(out.x_post, prev)
    bce = F.binary_cross_entropy_with_logits(z, (1.0 - 0.5 * l1).detach().clamp(0.0, 1.0), reduction="none")
    wk = torch.exp(-torch.arange(gamma, dtype=torch.float32) / decay)
    wk = (wk / wk.sum())[:, None]
    a, b, c = weights
    total = ((a * ce + b * l1 + c * bce) * wk).sum(0).mean()
    with torch.no_grad():
        greedy_match = (ell.argmax(-1) == target_logits.argmax(-1)).float().mean(1)    # per slot
    return {"loss": total, "ce": (ce * wk).sum(0).mean(), "l1": (l1 * wk).sum(0).mean(),
            "bce": (bce * wk).sum(0).mean(), "match": greedy_match}
