"""The engine's GGUF reader (native/src/dsv4-gguf.*): reads what gguf-py writes, and rejects
corrupt or truncated files with a FormatError naming the problem instead of crashing."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
native = pytest.importorskip("dsv4._native")
if not hasattr(native, "gguf_read"):
    pytest.skip("native module built without the GGUF reader", allow_module_level=True)

from dsv4.errors import FormatError  # noqa: E402


def _write_sample(path: Path) -> None:
    w = gguf.GGUFWriter(str(path), "dsv4")
    w.add_uint32("dsv4.block_count", 3)
    w.add_float32("dsv4.rope.freq_base", 10000.0)
    w.add_bool("dsv4.dspark.sample_from_anchor", True)
    w.add_string("general.name", "tiny")
    w.add_array("dsv4.attention.compress_ratios", [0, 4, 128])
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "\u00e9t\u00e9"])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("i8", rng.integers(-128, 127, (4, 8), dtype=np.int8))
    q = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q8", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.gguf"
    _write_sample(path)
    return path


def test_reader_matches_gguf_py(sample: Path) -> None:
    info = native.gguf_read(str(sample))
    ref = gguf.GGUFReader(str(sample))
    assert info["version"] == 3
    md = info["metadata"]
    assert md["dsv4.block_count"] == 3
    assert md["dsv4.rope.freq_base"] == pytest.approx(10000.0)
    assert md["dsv4.dspark.sample_from_anchor"] is True
    assert md["general.name"] == "tiny"
    assert md["dsv4.attention.compress_ratios"] == [0, 4, 128]
    assert md["tokenizer.ggml.tokens"] == ["a", "b", "\u00e9t\u00e9"]
    by_name = {t["name"]: t for t in info["tensors"]}
    assert set(by_name) == {t.name for t in ref.tensors}
    for t in ref.tensors:
        mine = by_name[t.name]
        assert mine["ne"] == [int(x) for x in t.shape]
        assert mine["nbytes"] == int(t.n_bytes)
        assert mine["type"] == int(t.tensor_type)
        assert info["file_size"] - mine["nbytes"] >= mine["offset"]


def _expect_format_error(path: Path, *fragments: str) -> None:
    with pytest.raises(FormatError) as exc:
        native.gguf_read(str(path))
    msg = str(exc.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg


def test_bad_magic(sample: Path) -> None:
    data = bytearray(sample.read_bytes())
    data[0:4] = b"GGUX"
    sample.write_bytes(bytes(data))
    _expect_format_error(sample, "bad magic")


@pytest.mark.parametrize("version", [1, 4, 0xFFFF])
def test_unsupported_version(sample: Path, version: int) -> None:
    data = bytearray(sample.read_bytes())
    data[4:8] = struct.pack("<I", version)
    sample.write_bytes(bytes(data))
    _expect_format_error(sample, f"version {version}")


def test_every_truncation_is_rejected(sample: Path, tmp_path: Path) -> None:
    """Cutting the file anywhere before the end of the last tensor's data gives a FormatError,
    never a crash or a silent success (only the trailing alignment padding may go)."""
    data = sample.read_bytes()
    info = native.gguf_read(str(sample))
    data_end = info["data_offset"] + max(t["offset"] + t["nbytes"] for t in info["tensors"])
    assert data_end <= len(data)
    cut = tmp_path / "cut.gguf"
    for n in range(data_end):
        cut.write_bytes(data[:n])
        with pytest.raises(FormatError, match="truncated|outside|corrupt"):
            native.gguf_read(str(cut))


def _tensor_info_offsets(path: Path) -> dict[str, int]:
    """File offsets of each tensor's `type` field in the tensor-info table (via gguf-py)."""
    ref = gguf.GGUFReader(str(path))
    out = {}
    for t in ref.tensors:
        # field parts: name_len, name, n_dims, dims, type, offset
        out[t.name] = int(t.field.offset) + sum(p.nbytes for p in t.field.parts[:4])
    return out


def test_unknown_tensor_type(sample: Path) -> None:
    off = _tensor_info_offsets(sample)["f32"]
    data = bytearray(sample.read_bytes())
    data[off:off + 4] = struct.pack("<I", 77)
    sample.write_bytes(bytes(data))
    _expect_format_error(sample, "f32", "unknown or unsupported type 77")


def test_misaligned_tensor_offset(sample: Path) -> None:
    off = _tensor_info_offsets(sample)["i8"] + 4
    data = bytearray(sample.read_bytes())
    (orig,) = struct.unpack("<Q", data[off:off + 8])
    data[off:off + 8] = struct.pack("<Q", orig + 1)
    sample.write_bytes(bytes(data))
    _expect_format_error(sample, "i8", "not aligned")


def test_tensor_data_out_of_bounds(sample: Path) -> None:
    off = _tensor_info_offsets(sample)["q8"] + 4
    data = bytearray(sample.read_bytes())
    data[off:off + 8] = struct.pack("<Q", 1 << 40)
    sample.write_bytes(bytes(data))
    _expect_format_error(sample, "q8", "outside")


def test_huge_counts_do_not_allocate(sample: Path) -> None:
    data = bytearray(sample.read_bytes())
    data[8:16] = struct.pack("<Q", 1 << 60)  # tensor count
    sample.write_bytes(bytes(data))
    _expect_format_error(sample, "corrupt GGUF header")


def test_missing_file_is_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot open"):
        native.gguf_read(str(tmp_path / "nope.gguf"))
