"""dsv4 convert refuses broken checkpoints with a ConversionError that names the culprit, and a
failed conversion leaves no output behind (neither OUT nor OUT.tmp, nor the llama.cpp sidecar)."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from dsv4.convert.main import convert
from dsv4.convert.safetensors import SafetensorsFile, write_safetensors
from dsv4.errors import ConversionError

Tensors = list[tuple[str, str, tuple[int, ...], np.ndarray]]


def rewrite(ckpt: Path, edit: Callable[[Tensors], Tensors]) -> None:
    """Apply `edit` to the tensor list of every shard and rewrite the shards and the index."""
    weight_map = {}
    for path in sorted(ckpt.glob("*.safetensors")):
        with SafetensorsFile(path) as f:
            tensors = [(n, f.info(n).dtype, f.info(n).shape, f.raw(n).copy()) for n in f.names()]
        tensors = edit(tensors)
        write_safetensors(path, tensors, {"format": "pt"})
        weight_map.update({t[0]: path.name for t in tensors})
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def drop(name: str) -> Callable[[Tensors], Tensors]:
    return lambda ts: [t for t in ts if t[0] != name]


def replace(name: str, dtype: str, shape: tuple[int, ...], data: np.ndarray) -> Callable[[Tensors], Tensors]:
    return lambda ts: [(n, dtype, shape, data) if n == name else (n, d, s, a) for n, d, s, a in ts]


def poke(name: str, value: int, flat_index: int = 0) -> Callable[[Tensors], Tensors]:
    def edit(ts: Tensors) -> Tensors:
        out = []
        for n, d, s, a in ts:
            if n == name:
                a = a.copy()
                a[flat_index] = value
            out.append((n, d, s, a))
        return out
    return edit


def assert_fails(ckpt: Path, out_dir: Path, culprit: str, **kw) -> ConversionError:
    out = out_dir / "out.gguf"
    with pytest.raises(ConversionError) as info:
        convert(ckpt, out, **kw)
    assert culprit in str(info.value)
    left = sorted(p.name for p in out_dir.iterdir() if p.name.endswith((".gguf", ".tmp")))
    assert left == [], f"left behind: {left}"
    return info.value


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_missing_tensor(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, drop("layers.1.attn.wkv.weight"))
    assert_fails(convert_checkpoint_copy, out_dir, "layers.1.attn.wkv.weight")


def test_missing_draft_head_tensor(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, drop("mtp.2.markov_head.markov_w2.weight"))
    assert_fails(convert_checkpoint_copy, out_dir, "markov_head.markov_w2.weight", llama_cpp=True)


def test_missing_fp8_scale(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, drop("layers.2.attn.wq_b.scale"))
    err = assert_fails(convert_checkpoint_copy, out_dir, "layers.2.attn.wq_b.scale")
    assert "scale" in str(err)


def test_missing_expert_scale(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, drop("layers.0.ffn.experts.3.w2.scale"))
    assert_fails(convert_checkpoint_copy, out_dir, "layers.0.ffn.experts.3.w2.scale")


def test_dtype_not_matching(convert_checkpoint_copy, out_dir):
    d = 256
    rewrite(convert_checkpoint_copy, replace("layers.0.attn_norm.weight", "F32", (d,), np.ones(d, np.float32)))
    err = assert_fails(convert_checkpoint_copy, out_dir, "layers.0.attn_norm.weight")
    assert "F32" in str(err) and "BF16" in str(err)


def test_shape_not_matching_config(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, replace("layers.1.attn.wq_a.weight", "F8_E4M3", (192, 128),
                                             np.zeros(192 * 128, np.uint8)))
    err = assert_fails(convert_checkpoint_copy, out_dir, "layers.1.attn.wq_a.weight")
    assert "[192, 128]" in str(err) and "[192, 256]" in str(err)


def test_expert_shape_not_matching_config(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, replace("mtp.1.ffn.experts.0.w1.weight", "I8", (128, 64),
                                             np.zeros(128 * 64, np.int8)))
    assert_fails(convert_checkpoint_copy, out_dir, "mtp.1.ffn.experts.0.w1.weight")


def test_unknown_tensor_is_an_error(convert_checkpoint_copy, out_dir):
    extra = ("layers.0.attn.mystery.weight", "BF16", (4,), np.zeros(4, np.uint16))
    rewrite(convert_checkpoint_copy, lambda ts: ts + [extra] if ts[0][0] == "embed.weight" else ts)
    err = assert_fails(convert_checkpoint_copy, out_dir, "layers.0.attn.mystery.weight")
    assert "--allow-unknown" in str(err)


def test_allow_unknown_warns_and_skips(convert_checkpoint_copy, out_dir):
    gguf = pytest.importorskip("gguf")
    extra = ("layers.0.attn.mystery.weight", "BF16", (4,), np.zeros(4, np.uint16))
    rewrite(convert_checkpoint_copy, lambda ts: ts + [extra] if ts[0][0] == "embed.weight" else ts)
    logs: list[str] = []
    res = convert(convert_checkpoint_copy, out_dir / "out.gguf", allow_unknown=True, log=logs.append)
    assert res.skipped == ["layers.0.attn.mystery.weight"]
    assert any(m.startswith("warning") and "layers.0.attn.mystery.weight" in m for m in logs)
    names = {t.name for t in gguf.GGUFReader(str(res.outputs[0])).tensors}
    assert not any("mystery" in n for n in names)


def test_corrupt_safetensors_header(convert_checkpoint_copy, out_dir):
    shard = convert_checkpoint_copy / "model-00002-of-00002.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[8:16] = b"{not js:"
    shard.write_bytes(bytes(raw))
    assert_fails(convert_checkpoint_copy, out_dir, str(shard))


def test_header_length_past_end_of_file(convert_checkpoint_copy, out_dir):
    shard = convert_checkpoint_copy / "model-00001-of-00002.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[:8] = struct.pack("<Q", len(raw) * 2)
    shard.write_bytes(bytes(raw))
    assert_fails(convert_checkpoint_copy, out_dir, str(shard))


def test_truncated_safetensors_data(convert_checkpoint_copy, out_dir):
    shard = convert_checkpoint_copy / "model-00002-of-00002.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) - 1000])
    err = assert_fails(convert_checkpoint_copy, out_dir, str(shard))
    assert "truncated" in str(err)


def test_nan_fp8_scale(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, poke("layers.3.attn.wo_b.scale", 0xFF, 1))
    err = assert_fails(convert_checkpoint_copy, out_dir, "layers.3.attn.wo_b.scale")
    assert "NaN" in str(err)


def test_nan_expert_scale_found_while_streaming_leaves_nothing(convert_checkpoint_copy, out_dir):
    # Expert scales are only read while writing, so the error comes mid-file: the .tmp must go.
    rewrite(convert_checkpoint_copy, poke("mtp.2.ffn.experts.7.w3.scale", 0xFF, 5))
    assert_fails(convert_checkpoint_copy, out_dir, "mtp.2.ffn.experts.7.w3.scale")
    assert_fails(convert_checkpoint_copy, out_dir, "mtp.2.ffn.experts.7.w3.scale", llama_cpp=True)


def test_tid2eid_out_of_range(convert_checkpoint_copy, out_dir):
    rewrite(convert_checkpoint_copy, lambda ts: [
        (n, d, s, np.full(int(np.prod(s)), 99, np.int64).view(np.uint8)) if n == "layers.1.ffn.gate.tid2eid" else (n, d, s, a)
        for n, d, s, a in ts])
    assert_fails(convert_checkpoint_copy, out_dir, "layers.1.ffn.gate.tid2eid")


@pytest.mark.parametrize("field", ["q_lora_rank", "hidden_size", "compress_ratios", "rms_norm_eps"])
def test_config_missing_required_field(convert_checkpoint_copy, out_dir, field):
    path = convert_checkpoint_copy / "config.json"
    cfg = json.loads(path.read_text())
    del cfg[field]
    path.write_text(json.dumps(cfg))
    assert_fails(convert_checkpoint_copy, out_dir, repr(field))


def test_config_missing_dspark_field_with_stages(convert_checkpoint_copy, out_dir):
    path = convert_checkpoint_copy / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["dspark_target_layer_ids"]
    path.write_text(json.dumps(cfg))
    assert_fails(convert_checkpoint_copy, out_dir, "'dspark_target_layer_ids'")
    convert(convert_checkpoint_copy, out_dir / "ok.gguf", draft=False)  # the target alone still converts


def test_config_not_json(convert_checkpoint_copy, out_dir):
    (convert_checkpoint_copy / "config.json").write_text("{")
    assert_fails(convert_checkpoint_copy, out_dir, str(convert_checkpoint_copy / "config.json"))


def test_missing_shard_listed_in_index(convert_checkpoint_copy, out_dir):
    shard = convert_checkpoint_copy / "model-00002-of-00002.safetensors"
    shard.unlink()
    assert_fails(convert_checkpoint_copy, out_dir, str(shard))


def test_missing_tokenizer(convert_checkpoint_copy, out_dir):
    (convert_checkpoint_copy / "tokenizer.json").unlink()
    assert_fails(convert_checkpoint_copy, out_dir, "tokenizer.json")


def test_v41_config_is_rejected(convert_checkpoint_copy, out_dir):
    path = convert_checkpoint_copy / "config.json"
    cfg = json.loads(path.read_text())
    cfg["dspark_n_routed_experts"] = 4
    path.write_text(json.dumps(cfg))
    assert_fails(convert_checkpoint_copy, out_dir, "dspark_n_routed_experts")


def test_fp8_outtype_is_refused_for_llama_cpp(convert_checkpoint, out_dir):
    assert_fails(convert_checkpoint, out_dir, "--outtype fp8", llama_cpp=True, outtype="fp8")


def test_existing_output_is_not_overwritten(convert_checkpoint, out_dir):
    out = out_dir / "out.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(ConversionError, match="already exists"):
        convert(convert_checkpoint, out)
    assert out.read_bytes() == b"precious"
    assert not (out_dir / "out.gguf.tmp").exists()
    convert(convert_checkpoint, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_existing_sidecar_is_not_overwritten(convert_checkpoint, out_dir):
    side = out_dir / "mtp-out.gguf"
    side.write_bytes(b"precious")
    with pytest.raises(ConversionError, match="mtp-out.gguf"):
        convert(convert_checkpoint, out_dir / "out.gguf", llama_cpp=True)
    assert side.read_bytes() == b"precious" and not (out_dir / "out.gguf").exists()
