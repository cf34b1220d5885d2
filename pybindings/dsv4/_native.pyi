"""Type stubs of the compiled module dsv4._native (pybindings/module.cpp and bind_*.cpp).

Byte-level functions take numpy arrays and never cast values: byte arrays may be uint8 or int8
(and the ml_dtypes type named below), float inputs must be float32. Wrong dtypes or shapes raise
ValueError naming the function, the argument and what was expected.
"""
from __future__ import annotations

import os
from typing import Any, Callable, TypedDict

import numpy as np
import numpy.typing as npt

_Bytes = npt.NDArray[np.uint8] | npt.NDArray[np.int8]
_F32 = npt.NDArray[np.float32]
_U16 = npt.NDArray[np.uint16]

class TypeInfo(TypedDict):
    name: str            # "f32", "f16", "bf16", "q8_0", "mxfp4", "i8", "i32", "fp8_e4m3"
    type: int            # dsv4_type id (dense, not the GGUF id)
    gguf_type: int | None  # GGUF / ggml type id; None for fp8_e4m3
    block_size: int      # elements per block
    type_size: int       # bytes per block
    is_quantized: bool
    scale_block: int | None  # 128 for fp8_e4m3 (needs a [ceil(out/128), ceil(in/128)] scale tensor)
    has_to_float: bool
    has_from_float: bool

def version() -> str: ...

# Scalars, element-wise (output has the input's shape).
def decode_e4m3(data: _Bytes | npt.NDArray[Any]) -> _F32:
    """float8_e4m3fn bytes -> float32; 0x7F and 0xFF give NaN (0x7FC00000)."""
def decode_ue8m0(data: _Bytes | npt.NDArray[Any]) -> _F32:
    """float8_e8m0fnu bytes -> 2^(e-127); 0 gives 2^-127, 0xFF gives NaN."""
def decode_e2m1(codes: _Bytes) -> _F32:
    """E2M1 codes 0..15 (one per byte) -> float32; a code above 15 raises ValueError."""
def bf16_to_f32(bits: _U16 | npt.NDArray[np.int16] | npt.NDArray[Any]) -> _F32: ...
def f32_to_bf16(x: _F32) -> _U16:
    """Round to nearest even; NaN stays a quiet NaN."""
def f16_to_f32(bits: _U16 | npt.NDArray[np.int16] | npt.NDArray[np.float16]) -> _F32: ...
def f32_to_f16(x: _F32) -> _U16:
    """IEEE half bit patterns, round to nearest even, overflow to inf."""

# Block formats, row-wise over the last axis.
def quantize_q8_0(x: _F32) -> npt.NDArray[np.uint8]:
    """[..., n] (n % 32 == 0) -> [..., n/32*34], bit-exact with ggml's quantize_row_q8_0_ref."""
def dequantize_q8_0(data: _Bytes) -> _F32:
    """[..., nb*34] -> [..., nb*32]."""
def decode_mxfp4(data: _Bytes) -> _F32:
    """[..., nb*17] -> [..., nb*32], as ggml dequantizes MXFP4."""

# DeepSeek-V4 checkpoint weights.
def decode_fp8_weight(weight: _Bytes | npt.NDArray[Any], scale: _Bytes | _F32 | npt.NDArray[Any]) -> _F32:
    """e4m3 bytes [out, in] x scales [ceil(out/128), ceil(in/128)] (UE8M0 bytes or float32) -> [out, in]."""
def decode_fp4_weight(packed: _Bytes, scale: _Bytes | npt.NDArray[Any]) -> _F32:
    """packed [out, in/2] (low nibble = even element), UE8M0 scale [out, in/32] -> [out, in]."""
def fp4_to_mxfp4(packed: _Bytes, scale: _Bytes | npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Lossless repack to MXFP4 bytes [out, in/32*17]."""

# The type traits table. A type is a name ("q8_0", any case) or a GGUF type id (int-like).
def type_info(name_or_id: str | int) -> TypeInfo: ...
def type_names() -> list[str]: ...
def to_float(type: str | int, data: npt.NDArray[Any]) -> _F32:
    """Decode rows of raw bytes (the last axis, any dtype viewed as bytes) with the type's decoder."""
def from_float(type: str | int, x: _F32) -> npt.NDArray[np.uint8]:
    """Encode float32 rows with the type's encoder (f32, f16, bf16, q8_0)."""

# GGUF reader (bind_gguf.cpp).
def gguf_read(path: str) -> dict[str, Any]:
    """{version, alignment, file_size, data_offset, metadata, tensors} as the engine's reader sees them."""

# Benchmark helpers (bind_bench.cpp).
def read_bandwidth(n_threads: int, bytes: int = 256 << 20, reps: int = 5, prefetch: bool = False) -> float:
    """GB/s of the native read loop over a fresh `bytes` buffer on n_threads threads (median of reps passes)."""
def routed_expert_bytes(path: str, tokens: npt.ArrayLike, prompt: int, n_rows: int = 6, n_steps: int = 8,
                        n_threads: int = 1) -> list[tuple[int, int]]:
    """Routed-expert bytes a 1-row and an n_rows-row step stream at each of n_steps positions after a prompt."""

# Models and contexts (bind_model.cpp).
class Model:
    """A dsv4 / deepseek4 GGUF mapped and validated by the native loader."""
    def __init__(self, path: str, load_draft: bool = True, draft: str | os.PathLike[str] | None = None,
                 repack: bool = True) -> None:
        """draft: a llama.cpp dflash sidecar (mtp-*.gguf) to take the DSpark draft from instead of the
        file's own; FormatError when it is not a dflash file or was made for another model.
        repack: copy MXFP4 experts / FP8 matrices into the layouts of this CPU's packed kernels."""
    @property
    def packed_bytes(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def n_layer(self) -> int: ...
    @property
    def n_ctx_train(self) -> int: ...
    @property
    def n_tap(self) -> int: ...
    @property
    def has_draft(self) -> bool: ...
    @property
    def weight_bytes(self) -> int: ...
    @property
    def arch(self) -> str: ...
    def close(self) -> None: ...

class Context:
    """Caches, scratch and threads for one sequence over a Model."""
    def __init__(self, model: Model, n_ctx: int = 4096, n_threads: int = 0, n_batch: int = 64,
                 float_activations: bool = False) -> None: ...
    def decode(self, tokens: npt.NDArray[np.int32], pos: int, logit_rows: npt.NDArray[np.int32] | None = None,
               features: bool = False) -> tuple[_F32, _F32 | None]:
        """Run tokens at positions pos.. (pos == n_past); (logits [len(logit_rows), n_vocab], features or None)."""
    def truncate(self, n_past: int) -> None: ...
    @property
    def n_past(self) -> int: ...
    @property
    def max_rollback(self) -> int: ...
    def memory(self) -> dict[str, int]: ...
    def _layer_state(self, layer: int) -> dict[str, Any]: ...
    def _state_digest(self) -> list[int]:
        """dsv4_context_state_digest: per target layer, the digest of the cache bytes a continuation can
        read (see native/src/dsv4-kv-cache.h), then that of the DSpark rings (0 without a draft)."""
    def generate(self, prompt: npt.ArrayLike, max_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, speculative: bool = True, draft_max: int = 0,
                 confidence_threshold: float = 0.0, ignore_eos: bool = False,
                 on_token: Callable[[int], bool | None] | None = None) -> tuple[npt.NDArray[np.int32], dict[str, Any]]:
        """Fresh generation after prompt (plain or DSpark speculative); (tokens, stats).

        on_token(token) runs for each token as it is decided, with the GIL held only for the call; a
        falsy return stops (stop_reason "interrupted"); an exception stops and is re-raised.
        confidence_threshold > 0: adaptive draft length (sigmoid(c_k) >= threshold, left to right)."""
    def spec_begin(self, prompt: npt.ArrayLike, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0, speculative: bool = True) -> int:
        """Step-wise generation (dsv4_spec_begin): reset the context, seed its sampler, run the prompt
        (feeding the DSpark rings when speculative); returns the first token, the first step's anchor."""
    def spec_step(self, anchor: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  speculative: bool = True, draft_max: int = 0, confidence_threshold: float = 0.0,
                  max_out: int = 33) -> tuple[npt.NDArray[np.int32], dict[str, Any]]:
        """One round (dsv4_spec_step) on the committed state (after spec_begin or spec_step): draft up to
        min(block size, draft_max, max_out - 1) tokens (fewer under confidence_threshold), verify them in
        one target pass, keep the accepted prefix and roll back the rest. Returns (accepted drafts then the
        residual/bonus token, which is the next anchor; {n_drafted, draft_s, verify_s}). ValueError for a
        speculative step after plain decodes or truncations (they do not feed the draft rings)."""
    # DSpark draft test hooks (native/src/dsv4-dspark.h); ValueError without a draft.
    def _draft_inject(self, features: npt.ArrayLike, pos0: int) -> None: ...
    def _draft_block(self, anchor: int, p: int, gamma: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def _draft_heads(self, base_logits: npt.ArrayLike, x_post: npt.ArrayLike, anchor: int,
                     drafts: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]: ...
    def _draft_greedy(self, base_logits: npt.ArrayLike, anchor: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]: ...
    def close(self) -> None: ...
