#!/usr/bin/env python3
"""Converter benchmark: `dsv4 convert` throughput against a plain copy of the same bytes, and peak RSS.

Generates a V4 + DSpark checkpoint of a few GB on the fly (never committed): the tensor list comes
from convert/arch.py for a scaled-up config with V4's proportions (routed FP4 experts ~87% of the
bytes), payloads are random bytes (valid UE8M0 scales, valid expert ids), written straight to the
shards. Then, alternating and with the page cache warm for both:

* copy:    shutil.copyfile of every shard (what a file copy of the checkpoint costs);
* convert: `python -m dsv4 convert CKPT OUT.gguf --quiet` in a child process; wall time and the
           child's peak RSS (ru_maxrss from wait4).

Both rates are input bytes / seconds; medians of --repeat runs. Writes JSON and prints a table.

    python bench/convert.py                      # ~5.2 GB checkpoint under $TMPDIR, 3 repeats
    python bench/convert.py --experts 32 --repeat 1   # smaller and quicker
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# V4's shape at a size this machine can hold twice on disk (performance.md's medium model, with
# more experts so the checkpoint passes 4 GB).
BENCH_OVERRIDES = {
    "vocab_size": 32768, "hidden_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 16,
    "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 512, "o_groups": 8, "o_lora_rank": 512,
    "sliding_window": 128, "compress_ratios": [0, 4, 128, 4, 128, 4, 128, 4, 0, 0, 0],
    "index_n_heads": 16, "index_head_dim": 128, "index_topk": 64, "n_routed_experts": 128,
    "num_experts_per_tok": 6, "moe_intermediate_size": 1024, "num_hash_layers": 3,
    "max_position_embeddings": 65536, "dspark_target_layer_ids": [5, 6, 7], "dspark_markov_rank": 256,
    "dspark_noise_token_id": 7,
}

_DTYPE_SIZE = {"F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "BF16": 2, "F32": 4, "I64": 8}


def tensor_list(cfg_dict: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) of every tensor a checkpoint with this config holds."""
    from dsv4.convert import arch

    cfg = arch.V4Config.from_dict(cfg_dict, Path("config.json"))
    out: list[tuple[str, str, tuple[int, ...]]] = []

    def add(spec, hf: str, shape: tuple[int, ...]) -> None:
        k = spec.kind
        if k is arch.Kind.FP8:
            out.append((hf + ".weight", "F8_E4M3", shape))
            out.append((hf + ".scale", "F8_E8M0", (-(-shape[0] // 128), -(-shape[1] // 128))))
        elif k is arch.Kind.EXPERTS:
            for e in range(cfg.n_expert):
                base = hf.format(e=e)
                out.append((base + ".weight", "I8", (shape[0], shape[1] // 2)))
                out.append((base + ".scale", "F8_E8M0", (shape[0], shape[1] // 32)))
        else:
            dtype = {arch.Kind.BF16: "BF16", arch.Kind.F32: "F32", arch.Kind.FLOAT: "F32", arch.Kind.INDEX: "I64"}[k]
            out.append((hf, dtype, shape))

    for spec in arch.GLOBAL_TENSORS:
        add(spec, spec.hf, spec.shape(cfg))
    n_stages = len(cfg.compress_ratios) - cfg.n_layer
    for b in range(cfg.n_layer + n_stages):
        prefix = f"layers.{b}." if b < cfg.n_layer else f"mtp.{b - cfg.n_layer}."
        for spec in arch.BLOCK_TENSORS:
            if arch.block_applies(spec, cfg, b):
                add(spec, prefix + spec.hf, arch.block_shape(spec, cfg, b))
    for spec in arch.DRAFT_HEAD_TENSORS:
        if spec.hf == "confidence_head.proj.bias":
            continue  # V4 has none
        stage = 0 if spec.hf.startswith("main_") else n_stages - 1
        add(spec, f"mtp.{stage}.{spec.hf}", spec.shape(cfg))
    return out


class _Bytes:
    """Random payload bytes from one pool (fast), plus valid scales and expert ids."""

    def __init__(self, seed: int, n_experts: int, pool_mb: int = 64):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.integers(0, 256, pool_mb << 20, dtype=np.uint8)
        self.n_experts = n_experts
        self.pos = 0

    def payload(self, name: str, dtype: str, nbytes: int) -> memoryview | np.ndarray:
        if dtype == "F8_E8M0":
            return self.rng.integers(118, 132, nbytes, dtype=np.uint8)  # 2^-9 .. 2^4, never NaN
        if dtype == "I64":
            return self.rng.integers(0, self.n_experts, nbytes // 8, dtype=np.int64).view(np.uint8)
        if dtype == "F32":  # finite values (hc, sinks, ape, biases)
            return self.rng.standard_normal(nbytes // 4).astype(np.float32).view(np.uint8)
        start = self.pos % (len(self.pool) - nbytes) if nbytes < len(self.pool) else 0
        self.pos += 4099 * 17  # vary the window so tensors differ
        if nbytes <= len(self.pool):
            return memoryview(self.pool[start:start + nbytes])
        reps = -(-nbytes // len(self.pool))
        return np.tile(self.pool, reps)[:nbytes]


def write_checkpoint(out: Path, cfg: dict, shard_bytes: int, seed: int = 0, gen=None) -> int:
    """Stream the checkpoint to `out`: shards of about `shard_bytes`, index, config, tokenizer.

    `gen` makes the payloads: any object with `payload(name, dtype, nbytes)` returning that many
    bytes (default: `_Bytes`, random bytes, fine for conversion; bench/decode.py passes one whose
    values are finite and scaled for inference).
    """
    from dsv4.testing.fixture import write_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tensors = tensor_list(cfg)
    if gen is None:
        gen = _Bytes(seed, cfg["n_routed_experts"])
    groups: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size = 0
    for t in tensors:
        n = int(np.prod(t[2])) * _DTYPE_SIZE[t[1]]
        if size + n > shard_bytes and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, dtype, shape in group:
            n = int(np.prod(shape)) * _DTYPE_SIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(out / fname, "wb", buffering=0) as fh:
            fh.write(struct.pack("<Q", len(hb)) + hb)
            for name, dtype, shape in group:
                data = gen.payload(name, dtype, int(np.prod(shape)) * _DTYPE_SIZE[dtype])
                mv = memoryview(data).cast("B")
                while mv:
                    mv = mv[fh.write(mv):]
        total += off
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    write_tokenizer(out, cfg["vocab_size"])
    return total


def run_copy(ckpt: Path, dst: Path) -> float:
    dst.mkdir(exist_ok=True)
    t = time.perf_counter()
    for p in sorted(ckpt.glob("*.safetensors")):
        shutil.copyfile(p, dst / p.name)
    dt = time.perf_counter() - t
    shutil.rmtree(dst)
    return dt


def run_convert(ckpt: Path, out: Path, extra: list[str]) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "dsv4", "convert", str(ckpt), str(out), "--quiet", "--force", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"convert.py: conversion failed ({proc.returncode})")
    return dt, usage.ru_maxrss * 1024  # Linux reports KiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a new temp dir, removed after)")
    ap.add_argument("--experts", type=int, default=BENCH_OVERRIDES["n_routed_experts"], help="routed experts per layer")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--llama-cpp", action="store_true", help="time --llama-cpp (Q8_0) instead of the dsv4 layout")
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "convert.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where the copy and the GGUF are written (default: beside the checkpoint); "
                         "/dev/shm takes the disk's writeback out of both measurements")
    args = ap.parse_args()

    from dsv4.testing.fixture import FIXTURE_CONFIG

    cfg = copy.deepcopy(FIXTURE_CONFIG)
    cfg.update(BENCH_OVERRIDES)
    cfg["n_routed_experts"] = args.experts
    work = args.dir or Path(tempfile.mkdtemp(prefix="dsv4-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "ckpt"
    out_dir = args.out_dir or work
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "dsv4-bench-out.gguf"
    try:
        t = time.perf_counter()
        total = write_checkpoint(ckpt, cfg, int(args.shard_gb * 2**30))
        print(f"generated {total / 1e9:.2f} GB checkpoint in {time.perf_counter() - t:.0f} s: {ckpt}", file=sys.stderr)
        extra = ["--llama-cpp"] if args.llama_cpp else []
        copies, converts, rss = [], [], []
        for i in range(args.repeat):
            os.sync()  # flush the previous run's dirty pages outside the timed region
            copies.append(run_copy(ckpt, out_dir / "dsv4-bench-copy"))
            os.sync()
            dt, peak = run_convert(ckpt, out, extra)
            converts.append(dt)
            rss.append(peak)
            print(f"run {i + 1}: copy {total / copies[-1] / 1e6:.0f} MB/s, convert {total / dt / 1e6:.0f} MB/s, "
                  f"peak RSS {peak / 2**20:.0f} MiB", file=sys.stderr)
        outputs = [out, out.with_name("mtp-" + out.name)]
        out_bytes = sum(p.stat().st_size for p in outputs if p.exists())
        copy_mbs = total / statistics.median(copies) / 1e6
        conv_mbs = total / statistics.median(converts) / 1e6
        result = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "layout": "llama.cpp (q8_0)" if args.llama_cpp else "dsv4 (fp8 kept)",
            "output_dir": str(out_dir), "load_average": os.getloadavg(),
            "checkpoint_bytes": total, "output_bytes": out_bytes, "experts_per_layer": args.experts,
            "repeat": args.repeat, "copy_seconds": copies, "convert_seconds": converts, "peak_rss_bytes": rss,
            "copy_MBps": round(copy_mbs, 1), "convert_MBps": round(conv_mbs, 1),
            "ratio": round(conv_mbs / copy_mbs, 3), "peak_rss_MiB": round(max(rss) / 2**20, 1),
            "targets": {"ratio": 0.8, "peak_rss_MiB": 1536},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\n{'checkpoint':<18}{total / 1e9:>10.2f} GB   (output {out_bytes / 1e9:.2f} GB, {result['layout']})")
        print(f"{'copy':<18}{copy_mbs:>10.0f} MB/s  (median of {args.repeat})")
        print(f"{'convert':<18}{conv_mbs:>10.0f} MB/s  (median of {args.repeat})")
        print(f"{'convert / copy':<18}{result['ratio']:>10.2f}     (target >= 0.8)")
        print(f"{'peak RSS':<18}{result['peak_rss_MiB']:>10.0f} MiB  (target <= 1536)")
        print(f"JSON: {args.json}")
    finally:
        for p in (out, out.with_name("mtp-" + out.name)):
            if not args.keep and p.exists():
                p.unlink()
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
