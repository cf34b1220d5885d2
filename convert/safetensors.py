"""Minimal safetensors reader and writer that handle every dtype DeepSeek-V4 uses.

The `safetensors` numpy loader cannot read F8_E4M3 / F8_E8M0, so dsv4 parses the format itself:
an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
the data. The reader memory-maps the file and hands out one tensor's bytes at a time, after
checking every header entry against the file size.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from dsv4.errors import ConversionError

# Bytes per element, and the numpy dtype a typed view uses (None: raw bytes only).
DTYPES: dict[str, tuple[int, np.dtype | None]] = {
    "F64": (8, np.dtype("<f8")),
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, np.dtype("<u2")),  # bf16 bits; decode with dsv4.quant.bf16_to_f32
    "I64": (8, np.dtype("<i8")),
    "I32": (4, np.dtype("<i4")),
    "I16": (2, np.dtype("<i2")),
    "I8": (1, np.dtype("i1")),
    "U8": (1, np.dtype("u1")),
    "BOOL": (1, np.dtype("u1")),
    "F8_E4M3": (1, np.dtype("u1")),
    "F8_E5M2": (1, np.dtype("u1")),
    "F8_E8M0": (1, np.dtype("u1")),
}

_MAX_HEADER = 256 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class SafetensorsFile:
    """One safetensors file, header validated on open, data memory-mapped on first access."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise ConversionError(f"{self.path}: cannot open ({exc.strerror})") from exc
        self._mm: mmap.mmap | None = None
        try:
            self.metadata, self._infos = self._read_header()
        except Exception:
            self._fh.close()
            raise

    def _read_header(self) -> tuple[dict[str, str], dict[str, TensorInfo]]:
        file_size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(8)
        if len(head) < 8:
            raise ConversionError(f"{self.path}: truncated safetensors file ({file_size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > _MAX_HEADER or 8 + header_len > file_size:
            raise ConversionError(
                f"{self.path}: corrupt safetensors header (declares {header_len} header bytes, file has {file_size})"
            )
        raw = self._fh.read(header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{self.path}: corrupt safetensors header (not valid JSON: {exc})") from exc
        if not isinstance(header, dict):
            raise ConversionError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        data_start = 8 + header_len
        data_size = file_size - data_start
        metadata = header.pop("__metadata__", None) or {}
        infos: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            infos[name] = self._check_entry(name, entry, data_start, data_size)
        return metadata, infos

    def _check_entry(self, name: str, entry: object, data_start: int, data_size: int) -> TensorInfo:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise ConversionError(f"{where}: corrupt header entry {entry!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise ConversionError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ConversionError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise ConversionError(f"{where}: bad data_offsets {offsets!r}")
        nbytes = offsets[1] - offsets[0]
        want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][0]
        if nbytes != want:
            raise ConversionError(f"{where}: {nbytes} data bytes for {dtype}{shape} (expected {want})")
        if offsets[1] > data_size:
            raise ConversionError(
                f"{where}: data runs past the end of the file (truncated? needs {offsets[1]} data bytes, file has {data_size})"
            )
        return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], nbytes)

    # -- access --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise ConversionError(f"{self.path}: no tensor {name!r}") from None

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            size = os.fstat(self._fh.fileno()).st_size
            self._mm = mmap.mmap(self._fh.fileno(), size, access=mmap.ACCESS_READ) if size else None
        return self._mm  # type: ignore[return-value]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mapping (no copy)."""
        info = self.info(name)
        if info.nbytes == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.frombuffer(self._map(), dtype=np.uint8, count=info.nbytes, offset=info.begin)

    def array(self, name: str) -> np.ndarray:
        """The tensor as a numpy array of its storage dtype (BF16 as uint16 bits, F8 as uint8)."""
        info = self.info(name)
        np_dtype = DTYPES[info.dtype][1]
        return self.raw(name).view(np_dtype).reshape(info.shape)

    def fileno(self) -> int:
        """The OS file descriptor, for in-kernel copies (os.copy_file_range) of raw tensor bytes."""
        return self._fh.fileno()

    def _page_range(self, info: TensorInfo) -> tuple[int, int]:
        start = info.begin - info.begin % mmap.PAGESIZE
        return start, info.begin + info.nbytes - start

    def prefetch(self, name: str) -> None:
        """Ask the kernel to read a tensor ahead (MADV_WILLNEED); a hint, never an error."""
        info = self.info(name)
        if info.nbytes and hasattr(mmap, "MADV_WILLNEED"):
            start, length = self._page_range(info)
            try:
                self._map().madvise(mmap.MADV_WILLNEED, start, length)
            except (OSError, ValueError):
                pass

    def release(self, name: str) -> None:
        """Drop a tensor's pages from this process's mapping (MADV_DONTNEED).

        The pages stay in the page cache; only our resident set shrinks. Without this, reading a
        whole checkpoint through one mapping would make RSS grow to the checkpoint size. Views
        returned by raw()/array() stay valid: touching them again just faults the pages back in.
        """
        info = self.info(name)
        if info.nbytes and self._mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            start, length = self._page_range(info)
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, start, length)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a numpy view still points into the mapping; it is unmapped when that dies
            self._mm = None
        self._fh.close()

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Iterable[tuple[str, str, tuple[int, ...], np.ndarray | bytes]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write (name, dtype, shape, data) tensors; data is any array/bytes with the right size.

    Written to `path + ".tmp"` and renamed, so a crash never leaves a half-written file.
    """
    path = Path(path)
    entries: dict[str, object] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, dtype, shape, data in tensors:
        if dtype not in DTYPES:
            raise ValueError(f"unknown safetensors dtype {dtype!r} for {name}")
        blob = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][0]
        if len(blob) != want:
            raise ValueError(f"{name}: {len(blob)} bytes for {dtype}{list(shape)} (expected {want})")
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        entries = {"__metadata__": dict(metadata), **entries}
    header = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)  # data starts 8-byte aligned, as the reference writer does
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)))
        fh.write(header)
        for blob in blobs:
            fh.write(blob)
    os.replace(tmp, path)
