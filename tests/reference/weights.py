"""Load a native-format checkpoint directory and dequantize it, in torch only.

The reference must be independent of `dsv4.quant` and `dsv4.convert`, so the safetensors parse
and every decode (E4M3, UE8M0, E2M1) are written here again from formats.md / v4-model.md §7.2.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config

# safetensors dtype -> torch dtype of a typed view of the bytes (FP8 kinds are decoded below).
_VIEW_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.uint8, "F8_E8M0": torch.uint8,
}

# formats.md: E2M1 code c (bit 3 = sign, bits 0-2 index the magnitudes).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
FP4_BLOCK = 32


@dataclass
class RawTensor:
    dtype: str               # safetensors dtype string
    shape: tuple[int, ...]
    data: torch.Tensor       # typed view of the bytes (uint8 for the FP8 kinds)


def read_safetensors(path: str | Path) -> dict[str, RawTensor]:
    """Parse one safetensors file: u64 LE header length, JSON header, then the data."""
    buf = bytearray(Path(path).read_bytes())
    n = int.from_bytes(buf[:8], "little")
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    base = 8 + n
    out: dict[str, RawTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= len(buf) - base:
            raise ValueError(f"{path}: tensor {name} lies outside the file")
        raw = torch.frombuffer(buf, dtype=torch.uint8, offset=base + begin, count=end - begin) \
            if end > begin else torch.empty(0, dtype=torch.uint8)
        # clone() gives an aligned private copy, so the dtype view below is always legal.
        typed = raw.clone().view(_VIEW_DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = RawTensor(info["dtype"], tuple(info["shape"]), typed)
    return out


def ue8m0_to_float(raw: torch.Tensor) -> torch.Tensor:
    """UE8M0: 2^(e-127), e = 255 is NaN. Built from float32 bits, so it is exact (e = 0 too)."""
    e = raw.to(torch.int32)
    bits = torch.where(e == 0, torch.full_like(e, 0x00400000), e << 23)   # 2^-127 is subnormal
    bits = torch.where(e == 255, torch.full_like(e, 0x7FC00000), bits)
    return bits.view(torch.float32)


def e4m3_to_float(raw: torch.Tensor) -> torch.Tensor:
    return raw.view(torch.float8_e4m3fn).to(torch.float32)


def dequant_fp8_block(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """v4-model.md §7.2: W[o, i] = e4m3(Wq[o, i]) * ue8m0(S[o // bo, i // bi]); edge blocks partial."""
    out_f, in_f = weight.shape
    bo, bi = block
    want = (-(-out_f // bo), -(-in_f // bi))
    if tuple(scale.shape) != want:
        raise ValueError(f"FP8 scale shape {tuple(scale.shape)} != {want} for weight {tuple(weight.shape)}")
    s = ue8m0_to_float(scale).repeat_interleave(bo, 0)[:out_f].repeat_interleave(bi, 1)[:, :in_f]
    return e4m3_to_float(weight) * s


def dequant_fp4(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """v4-model.md §7.2: byte c holds elements 2c (low nibble) and 2c+1 (high nibble); one UE8M0
    scale per row per 32 consecutive inputs."""
    out_f, half = weight.shape
    in_f = 2 * half
    if tuple(scale.shape) != (out_f, in_f // FP4_BLOCK) or in_f % FP4_BLOCK:
        raise ValueError(f"FP4 scale shape {tuple(scale.shape)} does not fit packed weight {tuple(weight.shape)}")
    b = weight.view(torch.uint8).to(torch.int64)
    codes = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(out_f, in_f)
    values = torch.tensor(E2M1_VALUES, dtype=torch.float32)[codes]
    return values * ue8m0_to_float(scale).repeat_interleave(FP4_BLOCK, 1)


@dataclass
class Checkpoint:
    """Every tensor of the checkpoint, dequantized: floats as float32, ids as int64.

    `quantized` names the linears (prefix without `.weight`) that were FP8 or FP4 on disk; the
    optional activation fake-quant (v4-model.md §7.3) applies to those.
    """
    config: Config
    tensors: dict[str, torch.Tensor]
    quantized: set[str] = field(default_factory=set)
    stage_count: int = 0


def _shard_files(ckpt_dir: Path) -> list[Path]:
    index = ckpt_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [ckpt_dir / f for f in sorted(set(weight_map.values()))]
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt_dir}: no model.safetensors.index.json and no *.safetensors")
    return files


def load_checkpoint(ckpt_dir: str | Path) -> Checkpoint:
    ckpt_dir = Path(ckpt_dir)
    config = Config.from_file(ckpt_dir / "config.json")
    raw: dict[str, RawTensor] = {}
    for f in _shard_files(ckpt_dir):
        for name, t in read_safetensors(f).items():
            if name in raw:
                raise ValueError(f"tensor {name} appears in two shards")
            raw[name] = t

    tensors: dict[str, torch.Tensor] = {}
    quantized: set[str] = set()
    for name, t in raw.items():
        if name.endswith(".scale") and name[:-len(".scale")] + ".weight" in raw:
            continue                                  # consumed with its weight
        scale_name = name[:-len(".weight")] + ".scale" if name.endswith(".weight") else None
        if scale_name in raw:
            s = raw[scale_name]
            if s.dtype != "F8_E8M0":
                raise ValueError(f"{scale_name}: expected F8_E8M0, got {s.dtype}")
            if t.dtype == "F8_E4M3":
                tensors[name] = dequant_fp8_block(t.data, s.data, config.fp8_block)
            elif t.dtype in ("I8", "U8"):
                tensors[name] = dequant_fp4(t.data, s.data)
            else:
                raise ValueError(f"{name}: a scaled weight must be F8_E4M3 or packed FP4 (I8), got {t.dtype}")
            quantized.add(name[:-len(".weight")])
        elif t.dtype in ("F8_E4M3", "F8_E8M0"):
            raise ValueError(f"{name}: {t.dtype} tensor without a matching .weight/.scale pair")
        elif t.data.is_floating_point():
            tensors[name] = t.data.to(torch.float32)
        else:
            tensors[name] = t.data.to(torch.int64)

    stages = {int(n.split(".")[1]) for n in tensors if n.startswith("mtp.")}
    if stages != set(range(len(stages))):
        raise ValueError(f"draft stages are not numbered 0..N-1: {sorted(stages)}")
    if stages and len(stages) != config.n_stages:
        raise ValueError(f"{len(stages)} mtp.N stages in the weights but compress_ratios lists {config.n_stages}")
    return Checkpoint(config, tensors, quantized, len(stages))
