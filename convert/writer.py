"""Streaming GGUF writer on top of gguf-py's GGUFWriter.

gguf-py writes the header, the key/values and the tensor infos (so its format code stays the
single source of truth for those bytes); then the tensor data is streamed, one piece at a time,
by a writer thread:

* raw pieces (FP8 bytes, BF16, F32) are copied by the kernel from the shard into the output
  (`os.copy_file_range`), never entering Python;
* computed pieces (MXFP4 repacks, Q8_0, ...) are numpy buffers handed over through a short queue,
  so the CPU work of the next piece overlaps the write of this one.

Nothing accumulates: the queue holds at most a few megabytes.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dsv4.errors import ConversionError

from . import arch

ALIGNMENT = 32  # GGUF default data alignment (general.alignment is not written)

_VTYPES: dict[arch.V, tuple[str, str | None]] = {
    arch.V.U32: ("UINT32", None), arch.V.I32: ("INT32", None), arch.V.F32: ("FLOAT32", None),
    arch.V.BOOL: ("BOOL", None), arch.V.STR: ("STRING", None),
    arch.V.I32_ARRAY: ("ARRAY", "INT32"), arch.V.F32_ARRAY: ("ARRAY", "FLOAT32"),
    arch.V.STR_ARRAY: ("ARRAY", "STRING"),
}


@dataclass(frozen=True)
class CopyRange:
    """Bytes to copy in the kernel from an open file (a checkpoint shard)."""
    fd: int
    offset: int
    length: int


Piece = Any  # a C-contiguous numpy array / bytes, or a CopyRange


class _Sink:
    """The writer thread: writes pieces in order to `fd`, reports progress, keeps the first error."""

    def __init__(self, fd: int, progress: Callable[[int], None] | None, depth: int = 6):
        self.fd = fd
        self.progress = progress
        self.error: BaseException | None = None
        self._method = "copy_file_range" if hasattr(os, "copy_file_range") else "sendfile"
        self._q: queue.Queue[tuple[Piece, Callable[[], None] | None, bool] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="gguf-writer", daemon=True)
        self._thread.start()

    def _write_all(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        total = len(mv)
        done = 0
        while done < total:
            done += os.write(self.fd, mv[done:])
        return total

    def _copy(self, c: CopyRange) -> int:
        # In-kernel copies: copy_file_range (same filesystem), else sendfile (any two files, e.g.
        # ext4 -> tmpfs), else a bounded pread/write loop.
        done = 0
        while done < c.length:
            count, offset = min(c.length - done, 1 << 30), c.offset + done
            n = 0
            if self._method == "copy_file_range":
                try:
                    n = os.copy_file_range(c.fd, self.fd, count, offset)
                except OSError:
                    self._method = "sendfile"
            if self._method == "sendfile":
                try:
                    n = os.sendfile(self.fd, c.fd, offset, count)
                except OSError:
                    self._method = "pread"
            if n == 0:
                chunk = os.pread(c.fd, min(count, 8 << 20), offset)
                if not chunk:
                    raise ConversionError(f"unexpected end of input while copying {c.length} bytes")
                n = self._write_all(chunk)
            done += n
        return c.length

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            piece, release, counted = item
            if self.error is None:
                try:
                    n = self._copy(piece) if isinstance(piece, CopyRange) else self._write_all(piece)
                    if self.progress is not None and counted:
                        self.progress(n)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                    self.error = exc
            if release is not None:
                release()

    def put(self, piece: Piece, release: Callable[[], None] | None = None, counted: bool = True) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._q.put((piece, release, counted), timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        # Let the thread drain what is queued without writing it, then stop.
        if self.error is None:
            self.error = ConversionError("aborted")
        try:
            self._q.put(None, timeout=5)
        except queue.Full:
            pass
        self._thread.join(timeout=30)


@dataclass(frozen=True)
class TensorHeader:
    name: str
    gtype: arch.GType
    shape: tuple[int, ...]  # logical, PyTorch order (GGUF's ne reversed)
    nbytes: int


class StreamingGGUFWriter:
    """Write one GGUF file: header first, then each tensor's data streamed in order."""

    def __init__(self, path: Path, arch_name: str, keys: Sequence[tuple[str, arch.V, Any]],
                 tensors: Sequence[TensorHeader], progress: Callable[[int], None] | None = None):
        import gguf  # deferred: gguf-py is only needed once a file is written

        self.path = path
        self._tensors = list(tensors)
        self._next = 0
        w = gguf.GGUFWriter(str(path), arch_name)
        for key, vtype, value in keys:
            if key == arch.KEY_ARCHITECTURE:
                continue  # GGUFWriter writes it from `arch_name`
            t, sub = _VTYPES[vtype]
            w.add_key_value(key, value, gguf.GGUFValueType[t], sub_type=gguf.GGUFValueType[sub] if sub else None)
        for t in self._tensors:
            qtype = gguf.GGMLQuantizationType(int(t.gtype))
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            if block > 1:  # quantized: gguf-py takes the byte shape of a uint8 array
                byte_shape = (*t.shape[:-1], t.shape[-1] // block * size)
                w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=qtype)
            else:
                w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        w.fout[0].flush()
        self._gguf = w
        self._fd = w.fout[0].fileno()
        self._pos = w.fout[0].tell()
        self._sink = _Sink(self._fd, progress)
        self._left = 0  # bytes still owed by the tensor being written

    def begin_tensor(self, name: str) -> None:
        if self._left:
            raise ConversionError(f"internal: tensor {self._tensors[self._next - 1].name} is {self._left} bytes short")
        if self._next >= len(self._tensors) or self._tensors[self._next].name != name:
            raise ConversionError(f"internal: tensor {name} written out of order")
        pad = -self._pos % ALIGNMENT
        if pad:
            self._sink.put(bytes(pad), counted=False)  # progress counts tensor bytes only
            self._pos += pad
        self._left = self._tensors[self._next].nbytes
        self._next += 1

    def write(self, piece: Piece, release: Callable[[], None] | None = None) -> None:
        n = piece.length if isinstance(piece, CopyRange) else memoryview(piece).nbytes
        if n > self._left:
            raise ConversionError(f"internal: tensor {self._tensors[self._next - 1].name} got {n - self._left} bytes too many")
        self._left -= n
        self._pos += n
        self._sink.put(piece, release)

    def finish(self) -> None:
        if self._left or self._next != len(self._tensors):
            raise ConversionError(f"internal: {self.path} is incomplete")
        self._sink.finish()
        self._gguf.close()

    def abort(self) -> None:
        self._sink.abort()
        try:
            self._gguf.close()
        except Exception:  # noqa: BLE001 - cleaning up after another error
            pass


class BufferPool:
    """A few reusable output buffers: a producer takes one, the writer thread gives it back."""

    def __init__(self, nbytes: int, count: int = 4):
        self.nbytes = nbytes
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        for _ in range(count):
            self._free.put(np.empty(nbytes, np.uint8))

    def take(self) -> np.ndarray:
        return self._free.get()

    def give(self, buf: np.ndarray) -> Callable[[], None]:
        return lambda: self._free.put(buf)
