"""THE name table: DeepSeek-V4 config fields and checkpoint tensor names -> GGUF keys, names, types.

Everything the converter writes is spelled here and nowhere else, for both layouts:

* `dsv4` (default): one file, keys `dsv4.<suffix>`, FP8 kept as e4m3 bytes + decoded scales,
  DSpark stages as blocks `blk.{n_layer + s}` and heads under `dspark.*` (gguf-layout.md §1).
* llama.cpp-compatible: target `deepseek4` + draft sidecar `dflash`, named and keyed as upstream's
  converter (llama.cpp `conversion/deepseek.py`) writes them (docs/llama-cpp-compat.md).

Upstream's `deepseek4.` key suffixes and per-block tensor names are shared by all three
architectures, which is why one table serves all of them. The tables are plain rows so the C++
loader (native/src/dsv4-model.*) can mirror them line for line.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from dsv4.errors import ConversionError

# ---------------------------------------------------------------------------------------------
# Architectures and layouts

ARCH_DSV4 = "dsv4"            # our single-file layout (target + draft)
ARCH_DEEPSEEK4 = "deepseek4"  # upstream llama.cpp target
ARCH_DFLASH = "dflash"        # upstream llama.cpp DSpark/DFlash draft sidecar

FP8_BLOCK = (128, 128)        # DeepSeek-V4 FP8 weight blocks (rows, cols)
FP4_BLOCK = 32                # inputs per UE8M0 scale of an FP4 expert row
EXPERT_GATING_SQRT_SOFTPLUS = 4  # upstream's LLAMA_EXPERT_GATING_FUNC_TYPE for "sqrtsoftplus"
FILE_TYPE_MOSTLY_MXFP4_MOE = 38  # upstream LlamaFileType written by its DeepSeek-V4 converter
GGUF_QUANTIZATION_VERSION = 2

# Upstream's DeepseekV4 converter writes this into the sidecar name: mtp-<target file name>.
DRAFT_SIDECAR_PREFIX = "mtp-"


def sidecar_path(target: Path) -> Path:
    return target.with_name(DRAFT_SIDECAR_PREFIX + target.name)


class Outtype(str, enum.Enum):
    """What FP8 dense weights become (`--outtype`)."""
    FP8 = "fp8"    # e4m3 bytes as I8 + F32 block scales (dsv4 layout only)
    Q8_0 = "q8_0"  # dequantized per 128x128 block, re-encoded as ggml Q8_0
    BF16 = "bf16"  # dequantized; exact, since e4m3 * 2^k fits bf16


class GType(enum.IntEnum):
    """GGUF tensor types the converter writes (ggml type ids)."""
    F32 = 0
    Q8_0 = 8
    I8 = 24
    I32 = 26
    BF16 = 30
    MXFP4 = 39


# (block elements, bytes per block) of each type, as gguf-py's GGML_QUANT_SIZES.
GTYPE_BLOCK: dict[GType, tuple[int, int]] = {
    GType.F32: (1, 4), GType.Q8_0: (32, 34), GType.I8: (1, 1), GType.I32: (1, 4),
    GType.BF16: (1, 2), GType.MXFP4: (32, 17),
}


def gtype_nbytes(gtype: GType, shape: Sequence[int]) -> int:
    """Bytes of a tensor of logical (PyTorch-order) `shape`; the last axis holds whole blocks."""
    block, size = GTYPE_BLOCK[gtype]
    if shape and shape[-1] % block:
        raise ValueError(f"{gtype.name} rows must be multiples of {block}, got shape {tuple(shape)}")
    return math.prod(shape) // block * size


# ---------------------------------------------------------------------------------------------
# config.json

# Required fields, with the type each must have. A missing field is an error naming it.
_INT, _FLOAT, _INTS = "int", "float", "list[int]"
REQUIRED_CONFIG: dict[str, str] = {
    "vocab_size": _INT, "hidden_size": _INT, "num_hidden_layers": _INT,
    "num_attention_heads": _INT, "head_dim": _INT, "qk_rope_head_dim": _INT,
    "q_lora_rank": _INT, "o_groups": _INT, "o_lora_rank": _INT, "sliding_window": _INT,
    "compress_ratios": _INTS, "compress_rope_theta": _FLOAT, "rope_theta": _FLOAT,
    "max_position_embeddings": _INT, "index_n_heads": _INT, "index_head_dim": _INT,
    "index_topk": _INT, "n_routed_experts": _INT, "n_shared_experts": _INT,
    "num_experts_per_tok": _INT, "moe_intermediate_size": _INT, "num_hash_layers": _INT,
    "routed_scaling_factor": _FLOAT, "swiglu_limit": _FLOAT, "hc_mult": _INT,
    "hc_sinkhorn_iters": _INT, "hc_eps": _FLOAT, "rms_norm_eps": _FLOAT, "scoring_func": "str",
}
# Required only when the checkpoint holds DSpark stages (mtp.N.* tensors).
REQUIRED_DSPARK_CONFIG: dict[str, str] = {
    "dspark_block_size": _INT, "dspark_noise_token_id": _INT,
    "dspark_target_layer_ids": _INTS, "dspark_markov_rank": _INT,
}
# Fields that only DeepSeek-V4.1 configs carry: a different architecture (v4-model.md §12.3).
V41_MARKERS = ("dspark_n_routed_experts", "dspark_n_activated_experts", "kv_source_layers")


def _check_field(path: Path, raw: dict[str, Any], name: str, kind: str) -> Any:
    if name not in raw:
        raise ConversionError(f"{path}: config is missing the required field {name!r}")
    v = raw[name]
    ok = {
        _INT: isinstance(v, int) and not isinstance(v, bool),
        _FLOAT: isinstance(v, (int, float)) and not isinstance(v, bool),
        _INTS: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
        "str": isinstance(v, str),
    }[kind]
    if not ok:
        raise ConversionError(f"{path}: config field {name!r} = {v!r} is not a {kind}")
    return v


@dataclass(frozen=True)
class DSparkConfig:
    block_size: int
    noise_token_id: int
    target_layer_ids: tuple[int, ...]
    markov_rank: int
    sliding_window: int


@dataclass(frozen=True)
class V4Config:
    """The hyperparameters the converter needs, parsed and checked from config.json."""
    path: Path
    vocab: int
    d: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    q_lora: int
    o_groups: int
    o_lora: int
    window: int
    compress_ratios: tuple[int, ...]  # as in config.json: target layers, then draft stages
    compress_rope_theta: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    n_ctx: int
    index_heads: int
    index_dim: int
    index_topk: int
    n_expert: int
    n_expert_shared: int
    n_expert_used: int
    inter: int
    n_hash: int
    route_scale: float
    norm_topk: bool
    swiglu_limit: float
    hc: int
    hc_iters: int
    hc_eps: float
    norm_eps: float
    bos_token_id: int | None
    eos_token_id: int | None
    dspark: DSparkConfig | None  # None when config.json lacks (some of) the dspark_* fields
    dspark_error: str | None     # why dspark is None

    @staticmethod
    def from_dict(raw: dict[str, Any], path: Path) -> "V4Config":
        for marker in V41_MARKERS:
            if marker in raw:
                raise ConversionError(f"{path}: field {marker!r} marks a DeepSeek-V4.1 config; only V4 is supported")
        f = {name: _check_field(path, raw, name, kind) for name, kind in REQUIRED_CONFIG.items()}
        if f["scoring_func"] != "sqrtsoftplus":
            raise ConversionError(f"{path}: scoring_func {f['scoring_func']!r} is not supported (V4 uses 'sqrtsoftplus')")
        qc = raw.get("quantization_config") or {}
        if qc.get("weight_block_size", list(FP8_BLOCK)) != list(FP8_BLOCK):
            raise ConversionError(f"{path}: quantization_config.weight_block_size {qc['weight_block_size']} "
                                  f"is not {list(FP8_BLOCK)}")
        if qc.get("fmt", "e4m3") != "e4m3" or qc.get("scale_fmt", "ue8m0") != "ue8m0":
            raise ConversionError(f"{path}: quantization_config fmt/scale_fmt must be e4m3/ue8m0")
        if len(f["compress_ratios"]) < f["num_hidden_layers"]:
            raise ConversionError(f"{path}: compress_ratios has {len(f['compress_ratios'])} entries, "
                                  f"fewer than num_hidden_layers = {f['num_hidden_layers']}")
        # The draft fields are checked here but only fatal when the draft is converted (plan.py):
        # `--no-draft` still converts a target whose dspark_* fields are incomplete.
        dspark, dspark_error = None, None
        try:
            ds = {name: _check_field(path, raw, name, kind) for name, kind in REQUIRED_DSPARK_CONFIG.items()}
            dspark = DSparkConfig(ds["dspark_block_size"], ds["dspark_noise_token_id"],
                                  tuple(ds["dspark_target_layer_ids"]), ds["dspark_markov_rank"],
                                  int(raw.get("dspark_sliding_window", f["sliding_window"])))
        except ConversionError as exc:
            dspark_error = str(exc)
        rope_scaling = raw.get("rope_scaling") or None
        return V4Config(
            path=path, vocab=f["vocab_size"], d=f["hidden_size"], n_layer=f["num_hidden_layers"],
            n_head=f["num_attention_heads"], n_head_kv=int(raw.get("num_key_value_heads", 1)),
            head_dim=f["head_dim"], rope_dim=f["qk_rope_head_dim"], q_lora=f["q_lora_rank"],
            o_groups=f["o_groups"], o_lora=f["o_lora_rank"], window=f["sliding_window"],
            compress_ratios=tuple(f["compress_ratios"]), compress_rope_theta=float(f["compress_rope_theta"]),
            rope_theta=float(f["rope_theta"]), rope_scaling=rope_scaling, n_ctx=f["max_position_embeddings"],
            index_heads=f["index_n_heads"], index_dim=f["index_head_dim"], index_topk=f["index_topk"],
            n_expert=f["n_routed_experts"], n_expert_shared=f["n_shared_experts"],
            n_expert_used=f["num_experts_per_tok"], inter=f["moe_intermediate_size"],
            n_hash=f["num_hash_layers"], route_scale=float(f["routed_scaling_factor"]),
            norm_topk=bool(raw.get("norm_topk_prob", True)), swiglu_limit=float(f["swiglu_limit"]),
            hc=f["hc_mult"], hc_iters=f["hc_sinkhorn_iters"], hc_eps=float(f["hc_eps"]),
            norm_eps=float(f["rms_norm_eps"]), bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"), dspark=dspark, dspark_error=dspark_error,
        )

    def ratio(self, block: int) -> int:
        """Compress ratio of a block; draft stages (block >= n_layer) always attend uncompressed."""
        return self.compress_ratios[block] if block < self.n_layer else 0

    @property
    def yarn(self) -> dict[str, Any] | None:
        rs = self.rope_scaling
        if rs and (rs.get("type") or rs.get("rope_type")) == "yarn" and rs.get("factor") is not None:
            return rs
        return None


# ---------------------------------------------------------------------------------------------
# Hyperparameter keys

class V(enum.Enum):
    """GGUF value types of the keys (gguf-py GGUFValueType names)."""
    U32 = "UINT32"
    I32 = "INT32"
    F32 = "FLOAT32"
    BOOL = "BOOL"
    STR = "STRING"
    I32_ARRAY = "INT32[]"
    F32_ARRAY = "FLOAT32[]"
    STR_ARRAY = "STRING[]"


@dataclass(frozen=True)
class Scope:
    """What one output file holds: the getters below read everything they need from here."""
    arch: str               # ARCH_DSV4 / ARCH_DEEPSEEK4 / ARCH_DFLASH
    cfg: V4Config
    n_stages: int           # draft stages written to this file (dsv4) or to the sidecar (dflash)
    has_conf_head: bool
    fp8_kept: bool          # dsv4 layout with --outtype fp8

    @property
    def n_blocks(self) -> int:
        """Blocks (blk.N) in this file."""
        if self.arch == ARCH_DFLASH:
            return self.n_stages
        return self.cfg.n_layer + (self.n_stages if self.arch == ARCH_DSV4 else 0)


Getter = Callable[[Scope], Any]  # returns the value, or None to leave the key out

# Model keys, written as `<arch>.<suffix>` (llama.cpp Keys.LLM/Attention/Rope/... suffixes).
_ALL, _TARGETS, _DSV4 = (ARCH_DSV4, ARCH_DEEPSEEK4, ARCH_DFLASH), (ARCH_DSV4, ARCH_DEEPSEEK4), (ARCH_DSV4,)


def _yarn(field: str, cast: Callable[[Any], Any]) -> Getter:
    return lambda s: cast(s.cfg.yarn[field]) if s.cfg.yarn and s.cfg.yarn.get(field) is not None else None


def _compress_ratios(s: Scope) -> list[int]:
    if s.arch == ARCH_DSV4:
        return list(s.cfg.compress_ratios[: s.cfg.n_layer])  # target layers only (gguf-layout §1)
    if s.arch == ARCH_DFLASH:
        return [0] * s.n_stages
    return list(s.cfg.compress_ratios)  # upstream writes config.json's list as it is


MODEL_KEYS: tuple[tuple[str, V, tuple[str, ...], Getter], ...] = (
    # suffix                                  type         archs      value
    ("block_count",                           V.U32,       _ALL,      lambda s: s.n_stages if s.arch == ARCH_DFLASH else s.cfg.n_layer),
    ("context_length",                        V.U32,       _ALL,      lambda s: s.cfg.n_ctx),
    ("embedding_length",                      V.U32,       _ALL,      lambda s: s.cfg.d),
    ("vocab_size",                            V.U32,       _DSV4,     lambda s: s.cfg.vocab),
    ("attention.head_count",                  V.U32,       _ALL,      lambda s: s.cfg.n_head),
    ("attention.head_count_kv",               V.U32,       _ALL,      lambda s: s.cfg.n_head_kv),
    ("rope.scaling.type",                     V.STR,       _ALL,      lambda s: "yarn" if s.cfg.yarn else None),
    ("rope.scaling.factor",                   V.F32,       _ALL,      _yarn("factor", float)),
    ("rope.scaling.original_context_length",  V.U32,       _ALL,      _yarn("original_max_position_embeddings", int)),
    ("rope.scaling.yarn_beta_fast",           V.F32,       _ALL,      _yarn("beta_fast", float)),
    ("rope.scaling.yarn_beta_slow",           V.F32,       _ALL,      _yarn("beta_slow", float)),
    ("rope.freq_base",                        V.F32,       _ALL,      lambda s: s.cfg.rope_theta),
    ("attention.layer_norm_rms_epsilon",      V.F32,       _ALL,      lambda s: s.cfg.norm_eps),
    ("expert_count",                          V.U32,       _ALL,      lambda s: s.cfg.n_expert),
    ("expert_used_count",                     V.U32,       _ALL,      lambda s: s.cfg.n_expert_used),
    ("expert_gating_func",                    V.U32,       _ALL,      lambda s: EXPERT_GATING_SQRT_SOFTPLUS),
    ("attention.key_length",                  V.U32,       _ALL,      lambda s: s.cfg.head_dim),
    ("attention.value_length",                V.U32,       _ALL,      lambda s: s.cfg.head_dim),
    ("rope.dimension_count",                  V.U32,       _ALL,      lambda s: s.cfg.rope_dim),
    ("attention.q_lora_rank",                 V.U32,       _ALL,      lambda s: s.cfg.q_lora),
    ("attention.sliding_window",              V.U32,       _ALL,      lambda s: s.cfg.window),
    ("expert_feed_forward_length",            V.U32,       _ALL,      lambda s: s.cfg.inter),
    ("expert_shared_count",                   V.U32,       _ALL,      lambda s: s.cfg.n_expert_shared),
    ("expert_weights_scale",                  V.F32,       _ALL,      lambda s: s.cfg.route_scale),
    ("expert_weights_norm",                   V.BOOL,      _ALL,      lambda s: s.cfg.norm_topk),
    # One entry per block in the file (dsv4: target layers, then draft stages).
    ("swiglu_clamp_exp",                      V.F32_ARRAY, _ALL,      lambda s: [s.cfg.swiglu_limit] * s.n_blocks),
    ("swiglu_clamp_shexp",                    V.F32_ARRAY, _ALL,      lambda s: [s.cfg.swiglu_limit] * s.n_blocks),
    ("attention.indexer.head_count",          V.U32,       _ALL,      lambda s: s.cfg.index_heads),
    ("attention.indexer.key_length",          V.U32,       _ALL,      lambda s: s.cfg.index_dim),
    ("attention.indexer.top_k",               V.U32,       _ALL,      lambda s: s.cfg.index_topk),
    ("attention.output_group_count",          V.U32,       _ALL,      lambda s: s.cfg.o_groups),
    ("attention.output_lora_rank",            V.U32,       _ALL,      lambda s: s.cfg.o_lora),
    ("attention.compress_ratios",             V.I32_ARRAY, _ALL,      _compress_ratios),
    ("attention.compress_rope_freq_base",     V.F32,       _ALL,      lambda s: s.cfg.compress_rope_theta),
    ("hyper_connection.count",                V.U32,       _ALL,      lambda s: s.cfg.hc),
    ("hyper_connection.sinkhorn_iterations",  V.U32,       _ALL,      lambda s: s.cfg.hc_iters),
    ("hyper_connection.epsilon",              V.F32,       _ALL,      lambda s: s.cfg.hc_eps),
    ("hash_layer_count",                      V.U32,       _ALL,      lambda s: 0 if s.arch == ARCH_DFLASH else s.cfg.n_hash),
    ("embedding_length_out",                  V.U32,       _TARGETS,  lambda s: s.cfg.d * s.cfg.hc),
    # dsv4 only: FP8 kept as e4m3 bytes + F32 block scales.
    ("fp8.format",                            V.STR,       _DSV4,     lambda s: "e4m3fn" if s.fp8_kept else None),
    ("fp8.block",                             V.I32_ARRAY, _DSV4,     lambda s: list(FP8_BLOCK) if s.fp8_kept else None),
    # dsv4 draft keys (dspark.md §5.3), only when the file holds the draft.
    ("dspark.stage_count",                    V.U32,       _DSV4,     lambda s: s.n_stages or None),
    ("dspark.block_size",                     V.U32,       _DSV4,     lambda s: s.cfg.dspark.block_size if s.n_stages else None),
    ("dspark.noise_token_id",                 V.U32,       _DSV4,     lambda s: s.cfg.dspark.noise_token_id if s.n_stages else None),
    ("dspark.markov_rank",                    V.U32,       _DSV4,     lambda s: s.cfg.dspark.markov_rank if s.n_stages else None),
    ("dspark.target_layer_ids",               V.I32_ARRAY, _DSV4,     lambda s: list(s.cfg.dspark.target_layer_ids) if s.n_stages else None),
    # The ids name the layer whose *output* is tapped (upstream's target_layers = ids + 1).
    ("dspark.target_tap",                     V.STR,       _DSV4,     lambda s: "layer_output" if s.n_stages else None),
    ("dspark.sample_from_anchor",             V.BOOL,      _DSV4,     lambda s: True if s.n_stages else None),
    ("dspark.has_confidence_head",            V.BOOL,      _DSV4,     lambda s: s.has_conf_head if s.n_stages else None),
    ("dspark.sliding_window",                 V.U32,       _DSV4,     lambda s: s.cfg.dspark.sliding_window if s.n_stages else None),
    # dflash sidecar keys (upstream DeepseekV4DSparkModel.set_gguf_parameters + the DSpark defaults).
    ("block_size",                            V.U32,       (ARCH_DFLASH,), lambda s: s.cfg.dspark.block_size),
    ("target_layers",                         V.I32_ARRAY, (ARCH_DFLASH,), lambda s: [i + 1 for i in s.cfg.dspark.target_layer_ids]),
    ("sample_from_anchor",                    V.BOOL,      (ARCH_DFLASH,), lambda s: True),
    ("has_confidence_head",                   V.BOOL,      (ARCH_DFLASH,), lambda s: s.has_conf_head),
)

# Non-model keys.
KEY_ARCHITECTURE = "general.architecture"
KEY_TYPE = "general.type"
KEY_NAME = "general.name"
KEY_FILE_TYPE = "general.file_type"
KEY_QUANT_VERSION = "general.quantization_version"
KEY_TOK_MODEL = "tokenizer.ggml.model"
KEY_TOK_PRE = "tokenizer.ggml.pre"
KEY_TOK_TOKENS = "tokenizer.ggml.tokens"
KEY_TOK_TYPES = "tokenizer.ggml.token_type"
KEY_TOK_MERGES = "tokenizer.ggml.merges"
KEY_TOK_BOS = "tokenizer.ggml.bos_token_id"
KEY_TOK_EOS = "tokenizer.ggml.eos_token_id"
KEY_TOK_PAD = "tokenizer.ggml.padding_token_id"
KEY_TOK_MASK = "tokenizer.ggml.mask_token_id"   # dflash: the DSpark noise token
KEY_TOK_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_TOK_ADD_EOS = "tokenizer.ggml.add_eos_token"
KEY_TOK_HF_JSON = "tokenizer.huggingface.json"  # dsv4 only: the original tokenizer.json text
KEY_CHAT_TEMPLATE = "tokenizer.chat_template"
TOKENIZER_MODEL = "gpt2"           # byte-level BPE
TOKENIZER_PRE = "deepseek-v3"      # V4 keeps V3's pre-tokenizer


def model_keys(scope: Scope) -> list[tuple[str, V, Any]]:
    """(full key, type, value) of every model key this file gets, in table order."""
    out = []
    for suffix, vtype, archs, get in MODEL_KEYS:
        if scope.arch in archs:
            value = get(scope)
            if value is not None:
                out.append((f"{scope.arch}.{suffix}", vtype, value))
    return out


# ---------------------------------------------------------------------------------------------
# Tensor names

class Kind(enum.Enum):
    """How a checkpoint tensor is stored and what it becomes."""
    FP8 = "fp8"          # F8_E4M3 `<hf>.weight` + F8_E8M0 `<hf>.scale` [ceil(out/128), ceil(in/128)]
    EXPERTS = "experts"  # per expert: I8 packed FP4 `<hf>.weight` [out, in/2] + F8_E8M0 `<hf>.scale` [out, in/32]
    BF16 = "bf16"
    F32 = "f32"
    FLOAT = "float"      # BF16 or F32, kept as it is
    INDEX = "index"      # I64 (or I32) token -> expert table, stored as I32


class When(enum.Enum):
    """Which blocks carry a per-block tensor."""
    ALWAYS = "always"
    COMPRESSED = "ratio > 0"
    CSA = "ratio == 4"
    HASH = "hash-routed layer"
    ROUTED = "score-routed layer (not hash)"


Shape = Callable[[V4Config], tuple[int, ...]]


@dataclass(frozen=True)
class TensorSpec:
    """One row: checkpoint name (relative to the block or stage), GGUF name(s), kind, logical shape.

    For FP8 and EXPERTS `hf` and the GGUF names are prefixes: `.weight` (and `.scale` for a kept
    FP8 weight) are appended. Otherwise they are full names.
    """
    hf: str
    gguf: str
    kind: Kind
    shape: Shape | None  # None: depends on the block's compress ratio (_RATIO_SHAPES)
    when: When = When.ALWAYS
    sidecar: str | None = None   # draft heads: the name in the dflash sidecar (upstream)
    optional: bool = False


def _mix(c: V4Config) -> int:
    return (2 + c.hc) * c.hc


def _coff(c: V4Config, ratio: int) -> int:
    return 2 if ratio == 4 else 1


# Per block (target layer `layers.N.` -> `blk.N.`, draft stage `mtp.S.` -> `blk.{n_layer+S}.`
# in dsv4, `blk.S.` in the dflash sidecar). Names as upstream deepseek4 / dflash.
BLOCK_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("hc_attn_fn", "hc_attn_fn.weight", Kind.F32, lambda c: (_mix(c), c.hc * c.d)),
    TensorSpec("hc_attn_base", "hc_attn_base.weight", Kind.F32, lambda c: (_mix(c),)),
    TensorSpec("hc_attn_scale", "hc_attn_scale.weight", Kind.F32, lambda c: (3,)),
    TensorSpec("hc_ffn_fn", "hc_ffn_fn.weight", Kind.F32, lambda c: (_mix(c), c.hc * c.d)),
    TensorSpec("hc_ffn_base", "hc_ffn_base.weight", Kind.F32, lambda c: (_mix(c),)),
    TensorSpec("hc_ffn_scale", "hc_ffn_scale.weight", Kind.F32, lambda c: (3,)),
    TensorSpec("attn_norm.weight", "attn_norm.weight", Kind.BF16, lambda c: (c.d,)),
    TensorSpec("ffn_norm.weight", "ffn_norm.weight", Kind.BF16, lambda c: (c.d,)),
    TensorSpec("attn.attn_sink", "attn_sinks.weight", Kind.F32, lambda c: (c.n_head,)),
    TensorSpec("attn.wq_a", "attn_q_a", Kind.FP8, lambda c: (c.q_lora, c.d)),
    TensorSpec("attn.q_norm.weight", "attn_q_a_norm.weight", Kind.BF16, lambda c: (c.q_lora,)),
    TensorSpec("attn.wq_b", "attn_q_b", Kind.FP8, lambda c: (c.n_head * c.head_dim, c.q_lora)),
    TensorSpec("attn.wkv", "attn_kv", Kind.FP8, lambda c: (c.head_dim, c.d)),
    TensorSpec("attn.kv_norm.weight", "attn_kv_a_norm.weight", Kind.BF16, lambda c: (c.head_dim,)),
    # Grouped output LoRA: stored 2-D; llama.cpp reshapes it to {in/g, o_lora, g} on load.
    TensorSpec("attn.wo_a", "attn_output_a", Kind.FP8, lambda c: (c.o_groups * c.o_lora, c.n_head * c.head_dim // c.o_groups)),
    TensorSpec("attn.wo_b", "attn_output_b", Kind.FP8, lambda c: (c.d, c.o_groups * c.o_lora)),
    # Compressor (CSA ratio 4 keeps two overlapping windows, hence twice the width; HCA one).
    TensorSpec("attn.compressor.ape", "attn_compressor_ape.weight", Kind.F32, None, When.COMPRESSED),  # shape by ratio
    TensorSpec("attn.compressor.wkv.weight", "attn_compressor_kv.weight", Kind.BF16, None, When.COMPRESSED),
    TensorSpec("attn.compressor.wgate.weight", "attn_compressor_gate.weight", Kind.BF16, None, When.COMPRESSED),
    TensorSpec("attn.compressor.norm.weight", "attn_compressor_norm.weight", Kind.BF16, lambda c: (c.head_dim,), When.COMPRESSED),
    TensorSpec("attn.indexer.wq_b", "indexer.attn_q_b", Kind.FP8, lambda c: (c.index_heads * c.index_dim, c.q_lora), When.CSA),
    TensorSpec("attn.indexer.weights_proj.weight", "indexer.proj.weight", Kind.BF16, lambda c: (c.index_heads, c.d), When.CSA),
    TensorSpec("attn.indexer.compressor.ape", "indexer_compressor_ape.weight", Kind.F32, lambda c: (4, 2 * c.index_dim), When.CSA),
    TensorSpec("attn.indexer.compressor.wkv.weight", "indexer_compressor_kv.weight", Kind.BF16, lambda c: (2 * c.index_dim, c.d), When.CSA),
    TensorSpec("attn.indexer.compressor.wgate.weight", "indexer_compressor_gate.weight", Kind.BF16, lambda c: (2 * c.index_dim, c.d), When.CSA),
    TensorSpec("attn.indexer.compressor.norm.weight", "indexer_compressor_norm.weight", Kind.BF16, lambda c: (c.index_dim,), When.CSA),
    TensorSpec("ffn.gate.weight", "ffn_gate_inp.weight", Kind.BF16, lambda c: (c.n_expert, c.d)),
    TensorSpec("ffn.gate.bias", "exp_probs_b.bias", Kind.F32, lambda c: (c.n_expert,), When.ROUTED),
    TensorSpec("ffn.gate.tid2eid", "ffn_gate_tid2eid.weight", Kind.INDEX, lambda c: (c.vocab, c.n_expert_used), When.HASH),
    # Routed experts, `{e}` = expert id; stacked [E, out, in] per block as MXFP4.
    TensorSpec("ffn.experts.{e}.w1", "ffn_gate_exps", Kind.EXPERTS, lambda c: (c.inter, c.d)),
    TensorSpec("ffn.experts.{e}.w2", "ffn_down_exps", Kind.EXPERTS, lambda c: (c.d, c.inter)),
    TensorSpec("ffn.experts.{e}.w3", "ffn_up_exps", Kind.EXPERTS, lambda c: (c.inter, c.d)),
    TensorSpec("ffn.shared_experts.w1", "ffn_gate_shexp", Kind.FP8, lambda c: (c.inter * c.n_expert_shared, c.d)),
    TensorSpec("ffn.shared_experts.w2", "ffn_down_shexp", Kind.FP8, lambda c: (c.d, c.inter * c.n_expert_shared)),
    TensorSpec("ffn.shared_experts.w3", "ffn_up_shexp", Kind.FP8, lambda c: (c.inter * c.n_expert_shared, c.d)),
)

# Shapes that depend on the block's compress ratio.
_RATIO_SHAPES: dict[str, Callable[[V4Config, int], tuple[int, ...]]] = {
    "attn.compressor.ape": lambda c, r: (r, _coff(c, r) * c.head_dim),
    "attn.compressor.wkv.weight": lambda c, r: (_coff(c, r) * c.head_dim, c.d),
    "attn.compressor.wgate.weight": lambda c, r: (_coff(c, r) * c.head_dim, c.d),
}

# Target globals (no block).
GLOBAL_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("embed.weight", "token_embd.weight", Kind.BF16, lambda c: (c.vocab, c.d)),
    TensorSpec("norm.weight", "output_norm.weight", Kind.BF16, lambda c: (c.d,)),
    TensorSpec("head.weight", "output.weight", Kind.BF16, lambda c: (c.vocab, c.d)),
    TensorSpec("hc_head_fn", "output_hc_fn.weight", Kind.F32, lambda c: (c.hc, c.hc * c.d)),
    TensorSpec("hc_head_base", "output_hc_base.weight", Kind.F32, lambda c: (c.hc,)),
    TensorSpec("hc_head_scale", "output_hc_scale.weight", Kind.F32, lambda c: (1,)),
)


def _taps(c: V4Config) -> int:
    return len(c.dspark.target_layer_ids) if c.dspark else 0


def _rank(c: V4Config) -> int:
    return c.dspark.markov_rank if c.dspark else 0


# DSpark heads: `mtp.S.<hf>` in any one stage (V4 puts main_proj/main_norm in stage 0 and the
# rest in the last one). dsv4 name (gguf) and upstream sidecar name (sidecar).
DRAFT_HEAD_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("main_proj", "dspark.fc", Kind.FP8, lambda c: (c.d, _taps(c) * c.d), sidecar="fc"),
    TensorSpec("main_norm.weight", "dspark.fc_norm.weight", Kind.BF16, lambda c: (c.d,), sidecar="enc.output_norm.weight"),
    TensorSpec("norm.weight", "dspark.output_norm.weight", Kind.BF16, lambda c: (c.d,), sidecar="output_norm.weight"),
    TensorSpec("hc_head_fn", "dspark.output_hc_fn.weight", Kind.F32, lambda c: (c.hc, c.hc * c.d), sidecar="output_hc_fn.weight"),
    TensorSpec("hc_head_base", "dspark.output_hc_base.weight", Kind.F32, lambda c: (c.hc,), sidecar="output_hc_base.weight"),
    TensorSpec("hc_head_scale", "dspark.output_hc_scale.weight", Kind.F32, lambda c: (1,), sidecar="output_hc_scale.weight"),
    # `markov_head.markov_w1` is an embedding [V, r], not an FFN w1: matched by full name only.
    TensorSpec("markov_head.markov_w1.weight", "dspark.markov_w1.weight", Kind.BF16, lambda c: (c.vocab, _rank(c)), sidecar="markov_w1.weight"),
    TensorSpec("markov_head.markov_w2.weight", "dspark.markov_w2.weight", Kind.BF16, lambda c: (c.vocab, _rank(c)), sidecar="markov_w2.weight"),
    TensorSpec("confidence_head.proj.weight", "dspark.conf_proj.weight", Kind.BF16, lambda c: (1, c.d + _rank(c)), sidecar="conf_proj.weight", optional=True),
    TensorSpec("confidence_head.proj.bias", "dspark.conf_proj.bias", Kind.FLOAT, lambda c: (1,), sidecar="conf_proj.bias", optional=True),
)

TARGET_LAYER_PREFIX = "layers.{i}."
DRAFT_STAGE_PREFIX = "mtp.{s}."
GGUF_BLOCK_PREFIX = "blk.{n}."
WEIGHT_SUFFIX, SCALE_SUFFIX = ".weight", ".scale"


def block_applies(spec: TensorSpec, cfg: V4Config, block: int) -> bool:
    ratio = cfg.ratio(block)
    hash_layer = block < min(cfg.n_hash, cfg.n_layer)  # draft stages are never hash-routed
    return {
        When.ALWAYS: True,
        When.COMPRESSED: ratio > 0,
        When.CSA: ratio == 4,
        When.HASH: hash_layer,
        When.ROUTED: not hash_layer,
    }[spec.when]


def block_shape(spec: TensorSpec, cfg: V4Config, block: int) -> tuple[int, ...]:
    if spec.shape is None:
        return _RATIO_SHAPES[spec.hf](cfg, cfg.ratio(block))
    return spec.shape(cfg)


# ---------------------------------------------------------------------------------------------
# Types

def output_type(kind: Kind, arch: str, outtype: Outtype, src_dtype: str, shape: tuple[int, ...],
                gguf_name: str) -> GType:
    """The GGUF type a checkpoint tensor is written as (FP8 -> the weight part only)."""
    if kind is Kind.EXPERTS:
        return GType.MXFP4
    if kind is Kind.INDEX:
        return GType.I32
    if kind is Kind.FP8:
        if outtype is Outtype.FP8:
            return GType.I8
        if outtype is Outtype.Q8_0 and shape[-1] % GTYPE_BLOCK[GType.Q8_0][0] == 0:
            return GType.Q8_0
        return GType.BF16  # bf16 asked for, or rows that Q8_0 cannot hold (see fp8_fallback)
    if src_dtype == "F32":
        return GType.F32
    if arch != ARCH_DSV4 and (len(shape) <= 1 or gguf_name.endswith("_norm.weight")):
        return GType.F32  # upstream writes 1-D tensors and norms as F32
    return GType.BF16


def fp8_fallback(outtype: Outtype, shape: tuple[int, ...]) -> bool:
    """True when an FP8 weight asked to become Q8_0 is written as BF16 (rows not whole blocks)."""
    return outtype is Outtype.Q8_0 and shape[-1] % GTYPE_BLOCK[GType.Q8_0][0] != 0


# Checkpoint dtypes each kind accepts (safetensors names).
KIND_DTYPES: dict[Kind, tuple[str, ...]] = {
    Kind.FP8: ("F8_E4M3",),
    Kind.EXPERTS: ("I8", "U8"),
    Kind.BF16: ("BF16",),
    Kind.F32: ("F32",),
    Kind.FLOAT: ("BF16", "F32"),
    Kind.INDEX: ("I64", "I32"),
}
SCALE_DTYPE = "F8_E8M0"
