"""A deterministic tiny DeepSeek-V4 + DSpark checkpoint in DeepSeek's native HF format.

Everything the real checkpoints have, at toy size: FP8 E4M3 dense weights with UE8M0 128x128
block scales (some with partial edge blocks, some axes with two blocks), FP4 E2M1 routed experts
with UE8M0 scales per 32, BF16/F32 tensors, I64 `tid2eid` on hash layers, compress ratios 0/4/128,
three DSpark stages under `mtp.{0,1,2}` with Markov and confidence heads, several shards with
`model.safetensors.index.json`, and a byte-level BPE tokenizer. Weights are random (seeded); the
initialisation follows v4-model.md §11 so activations stay finite.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dsv4.convert.safetensors import write_safetensors
from dsv4.quant import encode_fp4_weight, encode_fp8_weight, f32_to_bf16

SPECIAL_TOKENS = [
    "<｜begin▁of▁sentence｜>",  # 0 = bos, as in V4
    "<｜end▁of▁sentence｜>",    # 1 = eos
    "<｜▁pad▁｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜dspark▁noise｜>",        # the DSpark noise (mask) token
]
NOISE_TOKEN_ID = SPECIAL_TOKENS.index("<｜dspark▁noise｜>")

# HF root config.json of the fixture (key names as DeepSeek ships them).
FIXTURE_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV4ForCausalLM"],
    "model_type": "deepseek_v4",
    "vocab_size": 512,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 128,
    "qk_rope_head_dim": 64,
    "q_lora_rank": 192,          # not a multiple of 128: partial FP8 blocks on wq_a rows, wq_b cols
    "o_groups": 2,
    "o_lora_rank": 64,
    "sliding_window": 8,
    "compress_ratios": [0, 4, 128, 4, 128, 4, 0, 0, 0],
    "compress_rope_theta": 160000.0,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 16.0,
        "original_max_position_embeddings": 65536,
        "beta_fast": 32,
        "beta_slow": 1,
    },
    "max_position_embeddings": 4096,
    "index_n_heads": 4,
    "index_head_dim": 128,       # > qk_rope_head_dim, so the indexer vector has an un-roped part
    "index_topk": 4,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 128,
    "num_hash_layers": 3,
    "scoring_func": "sqrtsoftplus",
    "routed_scaling_factor": 1.5,
    "norm_topk_prob": True,
    "topk_method": "noaux_tc",
    "swiglu_limit": 10.0,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "quantization_config": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "scale_fmt": "ue8m0",
        "weight_block_size": [128, 128],
        "activation_scheme": "dynamic",
    },
    "expert_dtype": "fp4",
    "dspark_block_size": 5,
    "dspark_noise_token_id": NOISE_TOKEN_ID,
    "dspark_target_layer_ids": [3, 4, 5],
    "dspark_markov_rank": 32,
}

# One checkpoint tensor: name, safetensors dtype, shape, bytes (numpy array).
Tensor = tuple[str, str, tuple[int, ...], np.ndarray]


class TensorInit:
    """Seeded weight factory; each helper returns ready-to-write tensors.

    The block layout below asks this object for every tensor by name, shape and on-disk kind, so
    a subclass can supply other values for the same layout (tools/train_tiny.py: float weights
    to train, and trained weights encoded for export).
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
        return (mean + std * self.rng.standard_normal(shape)).astype(np.float32)

    def f32(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> list[Tensor]:
        return [(name, "F32", shape, self.normal(shape, std, mean))]

    def bf16(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> list[Tensor]:
        return [(name, "BF16", shape, f32_to_bf16(self.normal(shape, std, mean)))]

    def norm(self, name: str, dim: int) -> list[Tensor]:
        return self.bf16(name, (dim,), 0.1, 1.0)

    def fp8_linear(self, prefix: str, out_f: int, in_f: int) -> list[Tensor]:
        q, s = encode_fp8_weight(self.normal((out_f, in_f), in_f**-0.5))
        return [(f"{prefix}.weight", "F8_E4M3", q.shape, q), (f"{prefix}.scale", "F8_E8M0", s.shape, s)]

    def fp4_linear(self, prefix: str, out_f: int, in_f: int) -> list[Tensor]:
        q, s = encode_fp4_weight(self.normal((out_f, in_f), in_f**-0.5))
        return [(f"{prefix}.weight", "I8", q.shape, q), (f"{prefix}.scale", "F8_E8M0", s.shape, s)]

    def tid2eid(self, name: str, vocab: int, n_exp: int, top_k: int) -> list[Tensor]:
        # k distinct experts per token id (the reference's scatter would drop duplicates).
        t = np.stack([self.rng.permutation(n_exp)[:top_k] for _ in range(vocab)]).astype(np.int64)
        return [(name, "I64", t.shape, t)]


def _block_tensors(init: TensorInit, cfg: dict[str, Any], prefix: str, ratio: int, hash_layer: bool) -> Iterator[Tensor]:
    """v4-model.md §7.1: every tensor of one transformer block (trunk layer or DSpark stage)."""
    d, hc = cfg["hidden_size"], cfg["hc_mult"]
    n_heads, head_dim = cfg["num_attention_heads"], cfg["head_dim"]
    q_lora, groups, o_lora = cfg["q_lora_rank"], cfg["o_groups"], cfg["o_lora_rank"]
    n_exp, inter, vocab, top_k = (cfg["n_routed_experts"], cfg["moe_intermediate_size"],
                                  cfg["vocab_size"], cfg["num_experts_per_tok"])
    mix = (2 + hc) * hc
    for part in ("attn", "ffn"):
        yield from init.f32(f"{prefix}.hc_{part}_fn", (mix, hc * d), 2.0 / np.sqrt(hc * d))
        yield from init.f32(f"{prefix}.hc_{part}_base", (mix,), 0.5)
        yield from init.f32(f"{prefix}.hc_{part}_scale", (3,), 0.1, 0.5)
    yield from init.norm(f"{prefix}.attn_norm.weight", d)
    yield from init.norm(f"{prefix}.ffn_norm.weight", d)
    a = f"{prefix}.attn"
    yield from init.f32(f"{a}.attn_sink", (n_heads,), 1.0)
    yield from init.fp8_linear(f"{a}.wq_a", q_lora, d)
    yield from init.norm(f"{a}.q_norm.weight", q_lora)
    yield from init.fp8_linear(f"{a}.wq_b", n_heads * head_dim, q_lora)
    yield from init.fp8_linear(f"{a}.wkv", head_dim, d)
    yield from init.norm(f"{a}.kv_norm.weight", head_dim)
    yield from init.fp8_linear(f"{a}.wo_a", groups * o_lora, n_heads * head_dim // groups)
    yield from init.fp8_linear(f"{a}.wo_b", d, groups * o_lora)
    if ratio > 0:
        coff = 2 if ratio == 4 else 1
        c = f"{a}.compressor"
        yield from init.f32(f"{c}.ape", (ratio, coff * head_dim), 0.5)
        yield from init.bf16(f"{c}.wkv.weight", (coff * head_dim, d), d**-0.5)
        yield from init.bf16(f"{c}.wgate.weight", (coff * head_dim, d), d**-0.5)
        yield from init.norm(f"{c}.norm.weight", head_dim)
    if ratio == 4:
        n_ih, ih_dim = cfg["index_n_heads"], cfg["index_head_dim"]
        i = f"{a}.indexer"
        yield from init.fp8_linear(f"{i}.wq_b", n_ih * ih_dim, q_lora)
        yield from init.bf16(f"{i}.weights_proj.weight", (n_ih, d), d**-0.5)
        yield from init.f32(f"{i}.compressor.ape", (4, 2 * ih_dim), 0.5)
        yield from init.bf16(f"{i}.compressor.wkv.weight", (2 * ih_dim, d), d**-0.5)
        yield from init.bf16(f"{i}.compressor.wgate.weight", (2 * ih_dim, d), d**-0.5)
        yield from init.norm(f"{i}.compressor.norm.weight", ih_dim)
    f = f"{prefix}.ffn"
    yield from init.bf16(f"{f}.gate.weight", (n_exp, d), d**-0.5)
    if hash_layer:
        yield from init.tid2eid(f"{f}.gate.tid2eid", vocab, n_exp, top_k)
    else:
        yield from init.f32(f"{f}.gate.bias", (n_exp,), 0.1)
    for e in range(n_exp):
        yield from init.fp4_linear(f"{f}.experts.{e}.w1", inter, d)
        yield from init.fp4_linear(f"{f}.experts.{e}.w3", inter, d)
        yield from init.fp4_linear(f"{f}.experts.{e}.w2", d, inter)
    yield from init.fp8_linear(f"{f}.shared_experts.w1", inter, d)
    yield from init.fp8_linear(f"{f}.shared_experts.w3", inter, d)
    yield from init.fp8_linear(f"{f}.shared_experts.w2", d, inter)


def _hc_head(init: TensorInit, prefix: str, hc: int, d: int) -> Iterator[Tensor]:
    yield from init.f32(f"{prefix}hc_head_fn", (hc, hc * d), 2.0 / np.sqrt(hc * d))
    yield from init.f32(f"{prefix}hc_head_base", (hc,), 0.5)
    yield from init.f32(f"{prefix}hc_head_scale", (1,), 0.1, 0.5)


def checkpoint_tensors(cfg: dict[str, Any], seed: int, init: TensorInit | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield (group, tensor) in checkpoint order; group = block index (-1 for globals).

    `init` supplies the values (default: the seeded random `TensorInit(seed)`)."""
    init = init or TensorInit(seed)
    d, hc, vocab = cfg["hidden_size"], cfg["hc_mult"], cfg["vocab_size"]
    n_layers = cfg["num_hidden_layers"]
    ratios = cfg["compress_ratios"]
    for t in init.bf16("embed.weight", (vocab, d), 1.0):
        yield -1, t
    for i in range(n_layers):
        for t in _block_tensors(init, cfg, f"layers.{i}", ratios[i], i < cfg["num_hash_layers"]):
            yield i, t
    for t in [*init.norm("norm.weight", d), *init.bf16("head.weight", (vocab, d), d**-0.5), *_hc_head(init, "", hc, d)]:
        yield -1, t
    n_stages = len(ratios) - n_layers
    n_taps = len(cfg.get("dspark_target_layer_ids", []))
    rank = cfg.get("dspark_markov_rank", 0)
    for s in range(n_stages):
        group = n_layers + s
        p = f"mtp.{s}"
        if s == 0:
            for t in [*init.fp8_linear(f"{p}.main_proj", d, n_taps * d), *init.norm(f"{p}.main_norm.weight", d)]:
                yield group, t
        for t in _block_tensors(init, cfg, p, 0, False):
            yield group, t
        if s == n_stages - 1:
            heads = [
                *init.norm(f"{p}.norm.weight", d),
                *_hc_head(init, f"{p}.", hc, d),
                *init.bf16(f"{p}.markov_head.markov_w1.weight", (vocab, rank), 1.0),
                *init.bf16(f"{p}.markov_head.markov_w2.weight", (vocab, rank), rank**-0.5),
                *init.bf16(f"{p}.confidence_head.proj.weight", (1, d + rank), (d + rank) ** -0.5),
            ]
            for t in heads:
                yield group, t


def _corpus() -> str:
    """A deterministic text corpus for the toy tokenizer: the Zen of Python plus seeded code."""
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen once
        import this
    zen = codecs.decode(this.s, "rot13")
    rng = np.random.default_rng(1234)
    words = ("def class return self import from for while if else elif try except with as "
             "yield lambda None True False print len range list dict tuple value index name "
             "token model layer expert weight scale block cache draft verify accept").split()
    lines = []
    for _ in range(400):
        n = int(rng.integers(3, 10))
        lines.append("    " * int(rng.integers(0, 3)) + " ".join(rng.choice(words, n)) + ":")
    return zen + "\n" + "\n".join(lines) + "\n"


def write_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """Train a byte-level BPE (the `tokenizers` library) and write tokenizer.json + config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus().splitlines(keepends=True), trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    write_tokenizer_config(out_dir)


def write_tokenizer_config(out_dir: Path) -> None:
    """tokenizer_config.json naming the V4 special tokens (bos 0, eos 1, pad 2)."""
    tok_cfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[2],
        "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")


def make_fixture(out_dir: str | Path, seed: int = 0, shards: int = 2, **overrides: Any) -> Path:
    """Write the tiny checkpoint into `out_dir` (created) and return it.

    `overrides` replace top-level config keys (e.g. `swiglu_limit=2.0` to make the clamp fire).
    The same seed and overrides always give byte-identical files.
    """
    cfg = copy.deepcopy(FIXTURE_CONFIG)
    cfg.update(overrides)
    out = write_checkpoint(out_dir, cfg, checkpoint_tensors(cfg, seed), shards)
    write_tokenizer(out, cfg["vocab_size"])
    return out


def write_checkpoint(out_dir: str | Path, cfg: dict[str, Any], tensors: Iterator[tuple[int, Tensor]],
                     shards: int) -> Path:
    """Write (group, tensor) pairs as DeepSeek's native layout: safetensors shards (+ index when
    more than one), config.json and generation_config.json. No tokenizer files."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_blocks = len(cfg["compress_ratios"])
    per_shard: list[list[Tensor]] = [[] for _ in range(shards)]
    for group, tensor in tensors:
        # Globals go to the first shard, blocks spread evenly: each shard holds whole blocks.
        shard = 0 if group < 0 else min(shards - 1, group * shards // n_blocks)
        per_shard[shard].append(tensor)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard_tensors in enumerate(per_shard):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        write_safetensors(out / name, shard_tensors, {"format": "pt"})
        for t in shard_tensors:
            weight_map[t[0]] = name
            total += t[3].nbytes
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen_cfg = {"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 1.0, "top_p": 1.0}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    return out
