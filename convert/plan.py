"""Validation and the conversion plan: every output tensor, its type, size and how to produce it.

Building the plan reads only safetensors headers (and the small FP8 scale tensors), and checks
everything that can be checked before a byte is written: each expected tensor and scale exists
with the dtype and shape the config implies, no checkpoint tensor is left unexplained, draft
stages and their config agree. Producing a tensor (`PlannedTensor.produce`) streams its bytes to
the writer; the only checks left for that moment are the per-expert FP4 scales (too large to
read twice).
"""
from __future__ import annotations

import collections
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dsv4.errors import ConversionError

from . import arch
from .arch import GType, Kind, Outtype, TensorSpec, V4Config
from .checkpoint import Checkpoint
from .transforms import (FP4_BLOCK_BYTES, MXFP4_BLOCK_BYTES, Fp4Repacker, bf16_bits_to_f32, decode_ue8m0,
                         dequant_fp8_band, encode_bf16, encode_q8_0)
from .vocab import Vocab
from .writer import BufferPool, CopyRange, StreamingGGUFWriter

UE8M0_NAN = 0xFF
EXPERT_PIECE_BLOCKS = 1 << 16  # MXFP4 blocks per write (1.1 MB)
# Repack threads: one core is left to the writer thread, whose kernel copies are as much work.
REPACK_WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))
# Output buffers: the pieces being repacked, the writer's queue and the one being written.
POOL_BUFFERS = REPACK_WORKERS + 10


@dataclass
class PlannedTensor:
    name: str
    gtype: GType
    shape: tuple[int, ...]  # logical, PyTorch order
    nbytes: int
    produce: Callable[[StreamingGGUFWriter], None]
    sources: tuple[str, ...]


@dataclass
class OutputPlan:
    path: Path
    arch: str
    keys: list[tuple[str, arch.V, Any]]
    tensors: list[PlannedTensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass
class Plan:
    outputs: list[OutputPlan]
    skipped: list[str] = field(default_factory=list)  # unknown tensors skipped (--allow-unknown)
    notes: list[str] = field(default_factory=list)     # e.g. Q8_0 -> BF16 fallbacks
    n_stages: int = 0


class _Builder:
    def __init__(self, ckpt: Checkpoint, outtype: Outtype, pool: BufferPool):
        self.ckpt = ckpt
        self.cfg: V4Config = ckpt.config
        self.outtype = outtype
        self.pool = pool
        self.consumed: set[str] = set()
        self.notes: list[str] = []

    # -- checks ----------------------------------------------------------------------------------
    def _expect(self, name: str, dtypes: tuple[str, ...], shape: tuple[int, ...], what: str = "tensor") -> None:
        if name not in self.ckpt:
            raise ConversionError(f"{self.ckpt.dir}: missing {what} {name!r}")
        info = self.ckpt.info(name)
        if info.dtype not in dtypes:
            raise ConversionError(f"{self.ckpt.dir}: tensor {name!r} has dtype {info.dtype}, expected "
                                  f"{' or '.join(dtypes)}")
        if info.shape != tuple(shape):
            raise ConversionError(f"{self.ckpt.dir}: tensor {name!r} has shape {list(info.shape)}, the config "
                                  f"implies {list(shape)}")
        self.consumed.add(name)

    def _scale_f32(self, name: str) -> np.ndarray:
        raw = self.ckpt.raw(name)
        bad = np.flatnonzero(raw == UE8M0_NAN)
        if bad.size:
            raise ConversionError(f"{self.ckpt.dir}: scale tensor {name!r} holds NaN (UE8M0 0xFF) at flat index {bad[0]}")
        return decode_ue8m0(self.ckpt.array(name))

    # -- one checkpoint tensor -> planned output tensor(s) ---------------------------------------------
    def plan(self, spec: TensorSpec, hf: str, gguf_name: str, shape: tuple[int, ...], arch_name: str) -> list[PlannedTensor]:
        kind = spec.kind
        if kind is Kind.FP8:
            return self._fp8(hf, gguf_name, shape, arch_name)
        if kind is Kind.EXPERTS:
            return [self._experts(hf, gguf_name, shape)]
        self._expect(hf, arch.KIND_DTYPES[kind], shape)
        src = self.ckpt.info(hf).dtype
        gtype = arch.output_type(kind, arch_name, self.outtype, src, shape, gguf_name)
        nbytes = arch.gtype_nbytes(gtype, shape)
        if kind is Kind.INDEX:
            return [PlannedTensor(gguf_name, gtype, shape, nbytes, lambda w: self._write_index(w, hf), (hf,))]
        if gtype is GType.F32 and src == "BF16":
            return [PlannedTensor(gguf_name, gtype, shape, nbytes, lambda w: self._write_bf16_as_f32(w, hf), (hf,))]
        return [PlannedTensor(gguf_name, gtype, shape, nbytes, lambda w: self._copy(w, hf), (hf,))]

    def _fp8(self, hf: str, gguf_name: str, shape: tuple[int, ...], arch_name: str) -> list[PlannedTensor]:
        wname, sname = hf + arch.WEIGHT_SUFFIX, hf + arch.SCALE_SUFFIX
        self._expect(wname, arch.KIND_DTYPES[Kind.FP8], shape)
        grid = (math.ceil(shape[0] / arch.FP8_BLOCK[0]), math.ceil(shape[1] / arch.FP8_BLOCK[1]))
        if sname not in self.ckpt:
            raise ConversionError(f"{self.ckpt.dir}: missing scale tensor {sname!r} for FP8 weight {wname!r}")
        self._expect(sname, (arch.SCALE_DTYPE,), grid, "scale tensor")
        self._scale_f32(sname)  # NaN check before anything is written
        gtype = arch.output_type(Kind.FP8, arch_name, self.outtype, "F8_E4M3", shape, gguf_name)
        wout = gguf_name + arch.WEIGHT_SUFFIX
        if arch.fp8_fallback(self.outtype, shape):
            self.notes.append(f"{wout}: rows of {shape[-1]} are not a multiple of 32, written as BF16 instead of Q8_0")
        if gtype is GType.I8:
            return [
                PlannedTensor(wout, GType.I8, shape, arch.gtype_nbytes(GType.I8, shape), lambda w: self._copy(w, wname), (wname,)),
                PlannedTensor(gguf_name + arch.SCALE_SUFFIX, GType.F32, grid, arch.gtype_nbytes(GType.F32, grid),
                              lambda w: self._write_array(w, self._scale_f32(sname)), (sname,)),
            ]
        return [PlannedTensor(wout, gtype, shape, arch.gtype_nbytes(gtype, shape),
                              lambda w: self._write_fp8_requant(w, wname, sname, shape, gtype), (wname, sname))]

    def _experts(self, hf_pattern: str, gguf_name: str, shape: tuple[int, ...]) -> PlannedTensor:
        rows, cols = shape
        if cols % arch.FP4_BLOCK:
            raise ConversionError(f"{self.cfg.path}: FP4 experts need rows that are multiples of {arch.FP4_BLOCK}; "
                                  f"{hf_pattern} has {cols}")
        names = []
        for e in range(self.cfg.n_expert):
            base = hf_pattern.format(e=e)
            wname, sname = base + arch.WEIGHT_SUFFIX, base + arch.SCALE_SUFFIX
            self._expect(wname, arch.KIND_DTYPES[Kind.EXPERTS], (rows, cols // 2))
            if sname not in self.ckpt:
                raise ConversionError(f"{self.ckpt.dir}: missing scale tensor {sname!r} for FP4 weight {wname!r}")
            self._expect(sname, (arch.SCALE_DTYPE,), (rows, cols // arch.FP4_BLOCK), "scale tensor")
            names.append((wname, sname))
        full = (self.cfg.n_expert, rows, cols)
        srcs = tuple(n for pair in names for n in pair)
        return PlannedTensor(gguf_name + arch.WEIGHT_SUFFIX, GType.MXFP4, full, arch.gtype_nbytes(GType.MXFP4, full),
                             lambda w: self._write_experts(w, names), srcs)

    # -- producers ---------------------------------------------------------------------------------
    def _copy(self, w: StreamingGGUFWriter, name: str) -> None:
        src = self.ckpt.source(name)
        if src.info.nbytes:
            w.write(CopyRange(src.shard.fileno(), src.info.begin, src.info.nbytes))

    def _write_array(self, w: StreamingGGUFWriter, a: np.ndarray) -> None:
        w.write(np.ascontiguousarray(a))

    def _write_bf16_as_f32(self, w: StreamingGGUFWriter, name: str) -> None:
        w.write(bf16_bits_to_f32(self.ckpt.array(name)))
        self.ckpt.release(name)

    def _write_index(self, w: StreamingGGUFWriter, name: str) -> None:
        ids = self.ckpt.array(name)
        bad = np.flatnonzero((ids < 0) | (ids >= self.cfg.n_expert))
        if bad.size:
            raise ConversionError(f"{self.ckpt.dir}: tensor {name!r} routes to expert {ids.flat[bad[0]]}, "
                                  f"outside 0..{self.cfg.n_expert - 1}")
        w.write(ids.astype(np.int32))
        self.ckpt.release(name)

    def _write_fp8_requant(self, w: StreamingGGUFWriter, wname: str, sname: str, shape: tuple[int, ...],
                           gtype: GType) -> None:
        weight = self.ckpt.array(wname).reshape(shape)
        scale = self._scale_f32(sname)
        for band in range(scale.shape[0]):
            r0 = band * arch.FP8_BLOCK[0]
            vals = dequant_fp8_band(weight[r0:r0 + arch.FP8_BLOCK[0]], scale[band])
            w.write(encode_q8_0(vals) if gtype is GType.Q8_0 else encode_bf16(vals))
        self.ckpt.release(wname)

    def _write_experts(self, w: StreamingGGUFWriter, names: list[tuple[str, str]]) -> None:
        # One expert at a time, cut in ~1 MB pieces that REPACK_WORKERS threads repack (numpy drops
        # the GIL) while the writer thread writes earlier pieces, in order. Memory stays at a few
        # reused buffers whatever the model size.
        local = threading.local()

        def job(src: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
            rp = getattr(local, "rp", None)
            if rp is None:
                rp = local.rp = Fp4Repacker()
            rp.repack(src, scale, out)

        pending: collections.deque = collections.deque()

        def hand_over(limit: int) -> None:
            while len(pending) > limit:
                fut, out, buf, done = pending.popleft()
                fut.result()
                w.write(out, self.pool.give(buf))
                for name in done:  # the expert's last piece: its mapped pages can go
                    self.ckpt.release(name)

        with ThreadPoolExecutor(REPACK_WORKERS, thread_name_prefix="mxfp4") as ex:
            try:
                for k, (wname, sname) in enumerate(names):
                    if k + 1 < len(names):
                        self.ckpt.prefetch(names[k + 1][0])
                    scale = self.ckpt.raw(sname)
                    bad = np.flatnonzero(scale == UE8M0_NAN)
                    if bad.size:
                        raise ConversionError(f"{self.ckpt.dir}: scale tensor {sname!r} holds NaN (UE8M0 0xFF) at "
                                              f"flat index {bad[0]}")
                    packed = self.ckpt.raw(wname).reshape(-1, FP4_BLOCK_BYTES)
                    n = packed.shape[0]
                    for i in range(0, n, EXPERT_PIECE_BLOCKS):
                        j = min(n, i + EXPERT_PIECE_BLOCKS)
                        buf = self.pool.take()
                        out = buf[: (j - i) * MXFP4_BLOCK_BYTES].reshape(j - i, MXFP4_BLOCK_BYTES)
                        done = (wname, sname) if j == n else ()
                        pending.append((ex.submit(job, packed[i:j], scale[i:j], out), out, buf, done))
                        hand_over(REPACK_WORKERS)
                hand_over(0)
            finally:
                for fut, _, buf, _ in pending:  # an error: let running jobs end, recycle buffers
                    fut.cancel()
                    self.pool.give(buf)()


def build_plan(ckpt: Checkpoint, vocab: Vocab, out: Path, *, llama_cpp: bool, outtype: Outtype, draft: bool,
               allow_unknown: bool) -> Plan:
    cfg = ckpt.config
    pool = BufferPool(EXPERT_PIECE_BLOCKS * MXFP4_BLOCK_BYTES, POOL_BUFFERS)
    b = _Builder(ckpt, outtype, pool)

    stages = ckpt.stage_ids() if draft else []
    n_stages = len(stages)
    if stages:
        _check_draft_config(ckpt, stages)
    target_arch = arch.ARCH_DEEPSEEK4 if llama_cpp else arch.ARCH_DSV4
    draft_arch = arch.ARCH_DFLASH if llama_cpp else arch.ARCH_DSV4

    def blk(n: int) -> str:
        return arch.GGUF_BLOCK_PREFIX.format(n=n)

    target: list[PlannedTensor] = []
    for spec in arch.GLOBAL_TENSORS:
        target += b.plan(spec, spec.hf, spec.gguf, spec.shape(cfg), target_arch)
    for i in range(cfg.n_layer):
        target += _plan_block(b, cfg, i, arch.TARGET_LAYER_PREFIX.format(i=i), blk(i), target_arch)

    drafted: list[PlannedTensor] = []
    has_conf = False
    for s in stages:
        gblock = cfg.n_layer + s if not llama_cpp else s
        drafted += _plan_block(b, cfg, cfg.n_layer + s, arch.DRAFT_STAGE_PREFIX.format(s=s), blk(gblock), draft_arch)
    if stages:
        for spec in arch.DRAFT_HEAD_TENSORS:
            found = [arch.DRAFT_STAGE_PREFIX.format(s=s) + spec.hf for s in stages
                     if arch.DRAFT_STAGE_PREFIX.format(s=s) + spec.hf + (arch.WEIGHT_SUFFIX if spec.kind is Kind.FP8 else "") in ckpt]
            if len(found) > 1:
                raise ConversionError(f"{ckpt.dir}: DSpark head tensor {spec.hf!r} appears in several stages: {found}")
            if not found:
                if spec.optional:
                    continue
                raise ConversionError(f"{ckpt.dir}: missing tensor 'mtp.<stage>.{spec.hf}' (DSpark head)")
            name = spec.sidecar if llama_cpp else spec.gguf
            assert name is not None
            drafted += b.plan(spec, found[0], name, spec.shape(cfg), draft_arch)
            has_conf = has_conf or spec.hf == "confidence_head.proj.weight"

    # Anything not consumed is unknown (with --no-draft every mtp.* tensor is dropped on purpose).
    unknown = [n for n in ckpt.names() if n not in b.consumed and (draft or not n.startswith("mtp."))]
    if unknown and not allow_unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConversionError(f"{ckpt.dir}: unknown tensor {unknown[0]!r}{more}; pass --allow-unknown to skip "
                              f"unknown tensors")

    name = ckpt.dir.name
    outputs: list[OutputPlan] = []
    if llama_cpp:
        scope = arch.Scope(arch.ARCH_DEEPSEEK4, cfg, n_stages, has_conf, fp8_kept=False)
        outputs.append(OutputPlan(out, arch.ARCH_DEEPSEEK4, _file_keys(scope, vocab, name), target))
        if stages:
            dscope = arch.Scope(arch.ARCH_DFLASH, cfg, n_stages, has_conf, fp8_kept=False)
            outputs.append(OutputPlan(arch.sidecar_path(out), arch.ARCH_DFLASH, _file_keys(dscope, vocab, name), drafted))
    else:
        scope = arch.Scope(arch.ARCH_DSV4, cfg, n_stages, has_conf, fp8_kept=outtype is Outtype.FP8)
        outputs.append(OutputPlan(out, arch.ARCH_DSV4, _file_keys(scope, vocab, name), target + drafted))
    return Plan(outputs, skipped=unknown, notes=b.notes, n_stages=n_stages)


def _plan_block(b: _Builder, cfg: V4Config, block: int, hf_prefix: str, gguf_prefix: str, arch_name: str) -> list[PlannedTensor]:
    out: list[PlannedTensor] = []
    for spec in arch.BLOCK_TENSORS:
        if arch.block_applies(spec, cfg, block):
            out += b.plan(spec, hf_prefix + spec.hf, gguf_prefix + spec.gguf, arch.block_shape(spec, cfg, block), arch_name)
    return out


def _check_draft_config(ckpt: Checkpoint, stages: list[int]) -> None:
    cfg, path = ckpt.config, ckpt.config.path
    if stages != list(range(len(stages))):
        missing = sorted(set(range(max(stages) + 1)) - set(stages))
        raise ConversionError(f"{ckpt.dir}: DSpark stages are not contiguous: no tensors for mtp.{missing[0]}")
    if cfg.dspark is None:
        raise ConversionError(f"{cfg.dspark_error} (the checkpoint has DSpark stages, mtp.*; "
                              f"--no-draft converts the target alone)")
    n = cfg.n_layer + len(stages)
    if len(cfg.compress_ratios) != n:
        raise ConversionError(f"{path}: compress_ratios has {len(cfg.compress_ratios)} entries, expected "
                              f"{n} ({cfg.n_layer} layers + {len(stages)} DSpark stages)")
    if any(cfg.compress_ratios[cfg.n_layer:]):
        raise ConversionError(f"{path}: compress_ratios of the DSpark stages must be 0, got "
                              f"{list(cfg.compress_ratios[cfg.n_layer:])}")
    ds = cfg.dspark
    for i in ds.target_layer_ids:
        if not 0 <= i < cfg.n_layer:
            raise ConversionError(f"{path}: dspark_target_layer_ids holds {i}, not a layer (0..{cfg.n_layer - 1})")
    if not 0 <= ds.noise_token_id < cfg.vocab:
        raise ConversionError(f"{path}: dspark_noise_token_id {ds.noise_token_id} is outside the vocabulary")
    if ds.block_size < 1 or ds.markov_rank < 0:
        raise ConversionError(f"{path}: dspark_block_size / dspark_markov_rank out of range")


def _file_keys(scope: arch.Scope, vocab: Vocab, name: str) -> list[tuple[str, arch.V, Any]]:
    keys: list[tuple[str, arch.V, Any]] = [
        (arch.KEY_TYPE, arch.V.STR, "model"),
        (arch.KEY_NAME, arch.V.STR, name),
    ]
    if scope.arch != arch.ARCH_DSV4:
        keys.append((arch.KEY_FILE_TYPE, arch.V.U32, arch.FILE_TYPE_MOSTLY_MXFP4_MOE))
    keys.append((arch.KEY_QUANT_VERSION, arch.V.U32, arch.GGUF_QUANTIZATION_VERSION))
    keys += arch.model_keys(scope)
    noise = scope.cfg.dspark.noise_token_id if scope.cfg.dspark else None
    keys += vocab.keys(scope.arch, noise)
    return keys
