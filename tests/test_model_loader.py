"""The engine's model loader (native/src/dsv4-model.cpp): loads both layouts the converter writes
and rejects files that contradict themselves with a FormatError naming the culprit — never a crash.

Bad files are made by patching bytes of a good conversion in place (same length), located with
gguf-py's reader, so each test changes exactly one thing.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
native = pytest.importorskip("dsv4._native")
if not hasattr(native, "Model"):
    pytest.skip("native module built without models", allow_module_level=True)

from dsv4.errors import FormatError  # noqa: E402


def test_loads_dsv4_layout_with_draft(converted) -> None:
    m = native.Model(str(converted()))
    assert (m.arch, m.n_vocab, m.n_layer, m.n_embd) == ("dsv4", 512, 6, 256)
    assert m.has_draft
    assert m.weight_bytes > 10_000_000


def test_loads_without_draft_when_asked(converted) -> None:
    assert not native.Model(str(converted()), load_draft=False).has_draft
    assert not native.Model(str(converted(draft=False))).has_draft


@pytest.mark.parametrize("outtype", ["q8_0", "bf16"])
def test_loads_llama_cpp_layout(converted, outtype: str) -> None:
    m = native.Model(str(converted(llama_cpp=True, outtype=outtype)))
    assert (m.arch, m.n_vocab, m.n_layer) == ("deepseek4", 512, 6)
    assert not m.has_draft


def test_sidecar_is_not_a_target(converted) -> None:
    target = converted(llama_cpp=True)
    sidecar = next(target.parent.glob(f"mtp-{target.stem}*.gguf"))
    with pytest.raises(FormatError, match="sidecar"):
        native.Model(str(sidecar))


# ---- bad files --------------------------------------------------------------------------------

@pytest.fixture()
def good(converted, tmp_path: Path) -> Path:
    dst = tmp_path / "model.gguf"
    shutil.copyfile(converted(), dst)
    return dst


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _field_value_offset(path: Path, key: str) -> int:
    field = gguf.GGUFReader(str(path)).fields[key]
    return int(field.offset) + sum(p.nbytes for p in field.parts[:-1])


def _tensor(path: Path, name: str):
    return next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)


def _expect(path: Path, *fragments: str) -> None:
    with pytest.raises(FormatError) as exc:
        native.Model(str(path))
    msg = str(exc.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg


def test_unknown_architecture(good: Path) -> None:
    _patch(good, _field_value_offset(good, "general.architecture"), b"dsv5")
    _expect(good, "unknown architecture", "dsv5")


def test_missing_tensor(good: Path) -> None:
    t = _tensor(good, "blk.2.attn_kv.weight")
    name_off = int(t.field.offset) + 8  # after the name length
    _patch(good, name_off, b"blk.2.attn_kX.weight")
    _expect(good, "missing tensor blk.2.attn_kv.weight")


def test_shape_contradicts_hyperparameters(good: Path) -> None:
    off = _field_value_offset(good, "dsv4.attention.q_lora_rank")
    (old,) = struct.unpack("<I", good.read_bytes()[off:off + 4])
    _patch(good, off, struct.pack("<I", old + 32))
    _expect(good, "attn_q_a.weight", "expected")


def test_missing_key(good: Path) -> None:
    field = gguf.GGUFReader(str(good)).fields["dsv4.hash_layer_count"]
    _patch(good, int(field.offset) + 8, b"dsv4.hash_layer_cXXnt")
    _expect(good, "missing metadata key dsv4.hash_layer_count")


def test_wrong_tensor_type(good: Path) -> None:
    t = _tensor(good, "blk.0.attn_kv_a_norm.weight")
    type_off = int(t.field.offset) + sum(p.nbytes for p in t.field.parts[:4])
    _patch(good, type_off, struct.pack("<I", int(gguf.GGMLQuantizationType.Q8_0)))
    _expect(good, "blk.0.attn_kv_a_norm.weight", "must be F32, F16 or BF16")


def test_nan_fp8_scale(good: Path) -> None:
    t = _tensor(good, "blk.1.attn_q_b.scale")
    _patch(good, int(t.data_offset), np.float32(np.nan).tobytes())
    _expect(good, "blk.1.attn_q_b.scale", "invalid scale")


def test_tid2eid_out_of_range(good: Path) -> None:
    t = _tensor(good, "blk.0.ffn_gate_tid2eid.weight")
    _patch(good, int(t.data_offset) + 4 * 5, struct.pack("<i", 99))
    _expect(good, "blk.0.ffn_gate_tid2eid.weight", "expert 99")


def test_unsupported_compress_ratio(good: Path) -> None:
    field = gguf.GGUFReader(str(good)).fields["dsv4.attention.compress_ratios"]
    # field.data indexes the parts that hold the elements; element 1 is layer 1 (ratio 4)
    off = int(field.offset) + sum(p.nbytes for p in field.parts[: field.data[1]])
    _patch(good, off, struct.pack("<i", 16))
    _expect(good, "compress ratio 16")


def test_truncated_model_file(good: Path) -> None:
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    _expect(good, "truncated")
