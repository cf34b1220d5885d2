"""Model hyperparameters, read from the checkpoint's HF root `config.json`.

v4-model.md §1.1 maps the HF key names to the reference's `ModelArgs` names; dspark.md §2.2 adds
the `dspark_*` keys. Nothing here is hardcoded to a model size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    vocab_size: int
    dim: int                      # d
    n_layers: int                 # target trunk layers (excludes the draft stages)
    n_heads: int                  # H
    head_dim: int                 # D, includes the rope part
    rope_dim: int                 # R, the LAST R dims of a head are roped
    q_lora_rank: int
    o_groups: int                 # G
    o_lora_rank: int
    window: int                   # W, sliding window (also the DSpark ring size)
    compress_ratios: tuple[int, ...]   # one per block: target layers, then draft stages
    rope_theta: float             # ratio-0 layers and draft stages, no YaRN
    compress_rope_theta: float    # ratio > 0 layers, with YaRN
    rope_factor: float
    original_seq_len: int         # YaRN L0; 0 = no YaRN anywhere
    beta_fast: float
    beta_slow: float
    index_n_heads: int            # Hi
    index_head_dim: int           # Di
    index_topk: int
    n_routed_experts: int         # E
    n_shared_experts: int
    n_activated_experts: int      # k
    moe_inter_dim: int            # I
    n_hash_layers: int
    score_func: str
    route_scale: float
    swiglu_limit: float           # 0 = no clamp
    hc_mult: int                  # hc
    hc_sinkhorn_iters: int
    hc_eps: float
    norm_eps: float
    fp8_block: tuple[int, int]    # quantization_config.weight_block_size
    # DSpark (dspark.md §2.2); None/empty when the checkpoint has no draft.
    dspark_block_size: int | None
    dspark_noise_token_id: int | None
    dspark_target_layer_ids: tuple[int, ...]
    dspark_markov_rank: int | None

    @property
    def nope_dim(self) -> int:
        return self.head_dim - self.rope_dim

    @property
    def n_stages(self) -> int:
        """Blocks listed in compress_ratios after the trunk (the DSpark stages)."""
        return len(self.compress_ratios) - self.n_layers

    @classmethod
    def from_dict(cls, c: dict[str, Any]) -> "Config":
        rs = c.get("rope_scaling") or {}
        yarn = rs.get("type", rs.get("rope_type")) == "yarn"
        q = c.get("quantization_config") or {}
        cfg = cls(
            vocab_size=c["vocab_size"],
            dim=c["hidden_size"],
            n_layers=c["num_hidden_layers"],
            n_heads=c["num_attention_heads"],
            head_dim=c["head_dim"],
            rope_dim=c["qk_rope_head_dim"],
            q_lora_rank=c["q_lora_rank"],
            o_groups=c["o_groups"],
            o_lora_rank=c["o_lora_rank"],
            window=c["sliding_window"],
            compress_ratios=tuple(int(r) for r in c["compress_ratios"]),
            rope_theta=float(c["rope_theta"]),
            compress_rope_theta=float(c["compress_rope_theta"]),
            rope_factor=float(rs.get("factor", 1.0)) if yarn else 1.0,
            original_seq_len=int(rs.get("original_max_position_embeddings", 0)) if yarn else 0,
            beta_fast=float(rs.get("beta_fast", 32)),
            beta_slow=float(rs.get("beta_slow", 1)),
            index_n_heads=c["index_n_heads"],
            index_head_dim=c["index_head_dim"],
            index_topk=c["index_topk"],
            n_routed_experts=c["n_routed_experts"],
            n_shared_experts=c.get("n_shared_experts", 1),
            n_activated_experts=c["num_experts_per_tok"],
            moe_inter_dim=c["moe_intermediate_size"],
            n_hash_layers=c.get("num_hash_layers", 0),
            score_func=c.get("scoring_func", "sqrtsoftplus"),
            route_scale=float(c.get("routed_scaling_factor", 1.0)),
            swiglu_limit=float(c.get("swiglu_limit", 0.0)),
            hc_mult=c["hc_mult"],
            hc_sinkhorn_iters=c["hc_sinkhorn_iters"],
            hc_eps=float(c["hc_eps"]),
            norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            fp8_block=tuple(q.get("weight_block_size", (128, 128))),
            dspark_block_size=c.get("dspark_block_size"),
            dspark_noise_token_id=c.get("dspark_noise_token_id"),
            dspark_target_layer_ids=tuple(c.get("dspark_target_layer_ids", ())),
            dspark_markov_rank=c.get("dspark_markov_rank"),
        )
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def validate(self) -> None:
        """The shape constraints of v4-model.md §11 that the reference relies on."""
        problems = []
        if len(self.compress_ratios) < self.n_layers:
            problems.append("compress_ratios has fewer entries than num_hidden_layers")
        if any(r < 0 for r in self.compress_ratios):
            problems.append(f"negative compress ratio in {self.compress_ratios}")
        if any(r != 0 for r in self.compress_ratios[self.n_layers:]):
            problems.append("draft stages must have compress ratio 0 (dspark.md §1.3)")
        if self.rope_dim % 2 or self.rope_dim > self.head_dim:
            problems.append("qk_rope_head_dim must be even and <= head_dim")
        if self.rope_dim > self.index_head_dim:
            problems.append("index_head_dim must hold the rope dims")
        di = self.index_head_dim
        if di & (di - 1):
            problems.append("index_head_dim must be a power of two (Hadamard)")
        if self.n_heads % self.o_groups:
            problems.append("num_attention_heads must be divisible by o_groups")
        if self.n_shared_experts != 1:
            problems.append("exactly one shared expert is supported (the official code asserts it)")
        if self.score_func != "sqrtsoftplus":
            problems.append(f"scoring_func {self.score_func!r} is not implemented (V4 uses sqrtsoftplus)")
        if problems:
            raise ValueError("config.json is not a DeepSeek-V4 config this reference can run: "
                             + "; ".join(problems))
