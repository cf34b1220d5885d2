"""`dsv4 bench MODEL.gguf`: decode, verification and prefill speed against the bandwidth limit.

Measured in one run, for each thread count (performance.md): the memory-read bandwidth (the
native read loop, `_native.read_bandwidth`, the better of the plain and the prefetching loop),
decode tokens/s (single-token steps after a short prompt), the cost of a 6-row verification step
relative to a 1-row decode step at the same position, and prefill tokens/s. Every number is the
median over --runs runs; each run measures the bandwidth again right before its decode steps.

Bytes of weights read per decoded token (the memory-bound limit is bandwidth / these bytes), from
the file's tensor table and hyperparameters (`bytes_per_token`):

    sum over target layers l < block_count of
        every tensor `blk.l.*`                         (attention, compressor, indexer, router,
                                                        shared expert, mHC, norms; FP8 scales too)
      + k / E x each routed-expert stack `blk.l.ffn_{gate,up,down}_exps.*`   (k experts of E)
      + 1 / V x `blk.l.ffn_gate_tid2eid.weight`        (hash layers read one row)
    + 1 / V x `token_embd.weight`                      (one embedding row)
    + every other global tensor (`output.weight`, `output_norm`, `output_hc_*`)

Draft stages (`blk.l`, l >= block_count) and `dspark.*` are left out: plain decoding never reads
them. Sizes are the file's bytes; the small vectors the loader widens to F32 (norms stored as
BF16) count at their file size, a difference far under 0.1%.

fraction_of_limit = decode_tps x bytes_per_token / bandwidth: 1.0 would be a decode step that
costs exactly one read of its weights at the measured bandwidth.

verify6_over_decode1 = median time of a 6-row step (logits for all 6 rows) followed by a truncate
back to where it started, over the median time of a 1-row step + truncate at the same position
(the pairs alternate). Six rows read more than one: each row picks its own k experts, so the
report also gives verify6_bytes_over_decode1, the ratio of bytes read under independent uniform
routing (E (1 - ((E - k) / E)^6) experts per layer instead of k), the memory-bound floor of
verify6_over_decode1 with random tokens; verify6_bytes_over_decode1_measured is the same ratio from
the experts the 6-row steps really selected (the forward pass counts the routed-expert bytes it
streams; a separate context runs the same tokens at the same positions). decode_tps times plain steps (no truncate); prefill_tps one decode call of
--prefill tokens from an empty cache, logits for the last row only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

VERIFY_ROWS = 6  # gamma + 1 with the DSpark block size 5

_EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.")
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass
class BenchSettings:
    threads: list[int] = field(default_factory=lambda: [1, 2])
    runs: int = 5
    prompt: int = 64          # tokens in the cache before the timed decode steps
    decode_tokens: int = 32   # timed single-token steps per run
    prefill: int = 256        # tokens of the timed prefill (split into n_batch chunks by the engine)
    n_batch: int = 64
    verify_reps: int = 8      # 1-row / 6-row pairs per run (median of each)
    bandwidth_mb: int = 256   # buffer of the read loop (far beyond the caches)
    bandwidth_reps: int = 5
    seed: int = 0


def bytes_per_token(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Bytes of weights one decoded token reads (see the module docstring), with the parts."""
    from dsv4 import _native

    g = _native.gguf_read(str(path))
    meta = g["metadata"]
    arch = meta.get("general.architecture")
    if arch not in ("dsv4", "deepseek4"):
        from dsv4.errors import FormatError

        raise FormatError(f"{path}: architecture {arch!r} is not a target model (dsv4 or deepseek4)")
    n_layer = int(meta[f"{arch}.block_count"])
    n_expert = int(meta[f"{arch}.expert_count"])
    k = int(meta[f"{arch}.expert_used_count"])
    tensors = {t["name"]: t for t in g["tensors"]}
    n_vocab = int(tensors["token_embd.weight"]["ne"][1])
    parts = {"layers_dense": 0.0, "layers_experts": 0.0, "embedding_row": 0.0, "head": 0.0}
    for name, t in tensors.items():
        nbytes = int(t["nbytes"])
        m = _BLOCK_RE.match(name)
        if m:
            if int(m.group(1)) >= n_layer:
                continue  # draft stage
            if _EXPERT_RE.match(name):
                parts["layers_experts"] += nbytes * k / n_expert
            elif name.endswith(".ffn_gate_tid2eid.weight"):
                parts["layers_dense"] += nbytes / n_vocab
            else:
                parts["layers_dense"] += nbytes
        elif name.startswith("dspark."):
            continue
        elif name == "token_embd.weight":
            parts["embedding_row"] += nbytes / n_vocab
        else:
            parts["head"] += nbytes
    total = sum(parts.values())
    # A 6-row step reads the experts any of its rows picked: with independent uniform top-k
    # routing, E * (1 - ((E - k) / E)^6) distinct experts per layer instead of k.
    touched6 = n_expert * (1.0 - ((n_expert - k) / n_expert) ** VERIFY_ROWS)
    verify6 = total + parts["layers_experts"] * (touched6 / k - 1.0)
    return {
        "total": int(round(total)),
        "verify6_total": int(round(verify6)),
        "parts": {key: int(round(v)) for key, v in parts.items()},
        "arch": arch, "n_layer": n_layer, "n_expert": n_expert, "n_expert_used": k, "n_vocab": n_vocab,
    }


def git_commit(repo_root: Path) -> str | None:
    """The commit a benchmark from a source checkout ran at (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(repo_root: Path | None = None) -> dict[str, Any]:
    """Where a benchmark ran: platform, CPU, load; with repo_root, the checkout's git commit."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                            "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "L2 cache", "L3 cache", "CPU max MHz"):
                info[key.strip().lower().replace(" ", "_")] = val.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if repo_root is not None:
        info["git_commit"] = git_commit(repo_root)
    return info


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _one_run(ctx: Any, n_threads: int, s: BenchSettings, tokens: Any) -> dict[str, float]:
    """One run at one thread count: bandwidth, prefill, decode steps, then verify-vs-decode pairs."""
    import numpy as np

    from dsv4 import _native

    nbytes = s.bandwidth_mb << 20
    bw_plain = _native.read_bandwidth(n_threads, nbytes, s.bandwidth_reps, False)
    bw_pf = _native.read_bandwidth(n_threads, nbytes, s.bandwidth_reps, True)

    ctx.truncate(0)
    t0 = time.perf_counter()
    logits, _ = ctx.decode(tokens[:s.prefill], 0, np.array([s.prefill - 1], dtype=np.int32))
    prefill_s = time.perf_counter() - t0

    ctx.truncate(0)
    ctx.decode(tokens[:s.prompt], 0, np.array([s.prompt - 1], dtype=np.int32))
    row0 = np.array([0], dtype=np.int32)
    steps = tokens[s.prompt:s.prompt + s.decode_tokens]
    t0 = time.perf_counter()
    for i in range(s.decode_tokens):
        ctx.decode(steps[i:i + 1], ctx.n_past, row0)
    decode_s = time.perf_counter() - t0

    pos = ctx.n_past
    if ctx.max_rollback < VERIFY_ROWS:
        raise RuntimeError(f"dsv4 bench: the context can roll back only {ctx.max_rollback} positions")
    rows = np.arange(VERIFY_ROWS, dtype=np.int32)
    block = tokens[pos:pos + VERIFY_ROWS]
    one, six = [], []
    for _ in range(s.verify_reps):  # alternate, so drift hits both alike
        t0 = time.perf_counter()
        ctx.decode(block[:1], pos, row0)
        ctx.truncate(pos)
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ctx.decode(block, pos, rows)
        ctx.truncate(pos)
        six.append(time.perf_counter() - t0)
    return {
        "bandwidth_plain_gbps": bw_plain, "bandwidth_prefetch_gbps": bw_pf, "bandwidth_gbps": max(bw_plain, bw_pf),
        "prefill_tps": s.prefill / prefill_s, "decode_tps": s.decode_tokens / decode_s,
        "decode1_s": _median(one), "verify6_s": _median(six),
        "logits_finite": float(np.isfinite(logits).all()),
    }


def measure(path: str | os.PathLike[str], s: BenchSettings,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs the benchmark on a GGUF file; returns the report (JSON-ready)."""
    import numpy as np

    from dsv4 import _native

    if s.runs < 1 or s.decode_tokens < 1 or s.prompt < 1 or s.prefill < 1 or s.verify_reps < 1 or not s.threads:
        raise ValueError("runs, decode-tokens, prompt, prefill and verify-reps must be >= 1, and threads non-empty")
    bpt = bytes_per_token(path)
    model = _native.Model(str(path), load_draft=False)
    packed_bytes = int(model.packed_bytes)  # weights copied into the packed kernel layouts at load
    n_tokens = max(s.prefill, s.prompt + max(s.decode_tokens, s.verify_reps) + VERIFY_ROWS)
    tokens = np.random.default_rng(s.seed).integers(0, model.n_vocab, n_tokens).astype(np.int32)
    contexts = {t: _native.Context(model, n_ctx=n_tokens + 8, n_threads=t, n_batch=s.n_batch) for t in s.threads}
    per_thread: dict[int, list[dict[str, float]]] = {t: [] for t in s.threads}
    try:
        for r in range(s.runs):  # runs outside, threads inside: a slow spell of the machine hits every count
            for t in s.threads:
                res = _one_run(contexts[t], t, s, tokens)
                per_thread[t].append(res)
                if progress:
                    progress(f"run {r + 1}/{s.runs}, {t} thread(s): bandwidth {res['bandwidth_gbps']:.2f} GB/s, "
                             f"decode {res['decode_tps']:.2f} tok/s, verify6/decode1 "
                             f"{res['verify6_s'] / res['decode1_s']:.2f}, prefill {res['prefill_tps']:.1f} tok/s")
    finally:
        for c in contexts.values():
            c.close()
        model.close()

    # The bytes a 6-row step really reads relative to a 1-row step: the experts its rows picked
    # (the file's own routing on these tokens), counted by the forward pass.
    steps = _native.routed_expert_bytes(str(path), tokens, s.prompt, VERIFY_ROWS, s.verify_reps, s.threads[0])
    dense = bpt["total"] - bpt["parts"]["layers_experts"]
    e1 = sum(a for a, _ in steps) / len(steps)
    e6 = sum(b for _, b in steps) / len(steps)
    measured_ratio = (dense + (VERIFY_ROWS - 1) * bpt["parts"]["embedding_row"] + e6) / (dense + e1)

    results = []
    for t in s.threads:
        runs = per_thread[t]
        med = {key: _median([run[key] for run in runs]) for key in runs[0]}
        if not all(run["logits_finite"] for run in runs) and progress:
            progress("warning: the model gives non-finite logits; its timings may not be representative")
        results.append({
            "threads": t,
            "bandwidth_gbps": round(med["bandwidth_gbps"], 3),
            "bytes_per_token": bpt["total"],
            "decode_tps": round(med["decode_tps"], 3),
            "fraction_of_limit": round(med["decode_tps"] * bpt["total"] / (med["bandwidth_gbps"] * 1e9), 4),
            "verify6_over_decode1": round(med["verify6_s"] / med["decode1_s"], 3),
            "prefill_tps": round(med["prefill_tps"], 2),
            "bandwidth_plain_gbps": round(med["bandwidth_plain_gbps"], 3),
            "bandwidth_prefetch_gbps": round(med["bandwidth_prefetch_gbps"], 3),
            "decode1_ms": round(med["decode1_s"] * 1e3, 3),
            "verify6_ms": round(med["verify6_s"] * 1e3, 3),
            "limit_tps": round(med["bandwidth_gbps"] * 1e9 / bpt["total"], 2),
            "logits_finite": all(run["logits_finite"] for run in runs),
            "per_run": {key: [round(run[key], 6) for run in runs] for key in runs[0]},
        })
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": str(path),
        "arch": bpt["arch"],
        "weight_bytes": os.path.getsize(path),
        "packed_bytes": packed_bytes,
        "bytes_per_token": bpt["total"],
        "bytes_per_token_parts": bpt["parts"],
        # the memory-bound floor of verify6_over_decode1 under uniform routing (random tokens)
        "verify6_bytes_over_decode1": round(bpt["verify6_total"] / bpt["total"], 3),
        # the same from the experts the 6-row steps actually selected (mean over verify_reps positions)
        "verify6_bytes_over_decode1_measured": round(measured_ratio, 3),
        "routed_expert_bytes_1row": int(round(e1)),
        "routed_expert_bytes_6rows": int(round(e6)),
        "settings": asdict(s),
        "machine": machine_info(),
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"model {report['model']} ({report['arch']}): {report['bytes_per_token'] / 1e6:.1f} MB of weights read per "
        f"decoded token; {report.get('packed_bytes', 0) / 1e6:.1f} MB repacked at load for this CPU's kernels",
        f"medians of {s['runs']} run(s); decode after {s['prompt']} tokens, prefill {s['prefill']} tokens in "
        f"chunks of {s['n_batch']}; a 6-row step reads {report['verify6_bytes_over_decode1']:.2f}x the bytes of "
        f"1 row (uniform routing), {report['verify6_bytes_over_decode1_measured']:.2f}x with the experts it selected",
        "",
        f"{'threads':>7} {'GB/s':>7} {'limit tok/s':>11} {'decode tok/s':>12} {'of limit':>8} "
        f"{'verify6/decode1':>15} {'prefill tok/s':>13}",
    ]
    for r in report["results"]:
        lines.append(f"{r['threads']:>7} {r['bandwidth_gbps']:>7.2f} {r['limit_tps']:>11.2f} {r['decode_tps']:>12.2f} "
                     f"{r['fraction_of_limit']:>8.2f} {r['verify6_over_decode1']:>15.2f} {r['prefill_tps']:>13.1f}")
    return "\n".join(lines)


def _thread_list(values: list[str]) -> list[int]:
    out = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                n = int(part)
                if n < 1:
                    raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {n}")
                out.append(n)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchSettings()
    parser.add_argument("model", type=Path, metavar="MODEL.gguf", help="a dsv4 or llama.cpp deepseek4 GGUF")
    parser.add_argument("--threads", nargs="+", default=["1", "2"], metavar="N",
                        help="thread counts to measure (default: 1 2; '1,2' works too)")
    parser.add_argument("--runs", type=int, default=d.runs, help=f"runs per thread count, medians reported (default {d.runs})")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--prompt", type=int, default=d.prompt, help=f"tokens before the timed decode steps (default {d.prompt})")
    parser.add_argument("--decode-tokens", type=int, default=d.decode_tokens,
                        help=f"timed single-token decode steps per run (default {d.decode_tokens})")
    parser.add_argument("--prefill", type=int, default=d.prefill, help=f"tokens of the timed prefill (default {d.prefill})")
    parser.add_argument("--n-batch", type=int, default=d.n_batch, help=f"prefill chunk rows (default {d.n_batch})")
    parser.add_argument("--verify-reps", type=int, default=d.verify_reps,
                        help=f"6-row / 1-row step pairs per run (default {d.verify_reps})")
    parser.add_argument("--bandwidth-mb", type=int, default=d.bandwidth_mb,
                        help=f"buffer of the read-bandwidth loop in MiB (default {d.bandwidth_mb})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the random token ids")
    parser.add_argument("--quiet", action="store_true", help="no per-run progress lines")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(threads=_thread_list(args.threads), runs=args.runs, prompt=args.prompt,
                         decode_tokens=args.decode_tokens, prefill=args.prefill, n_batch=args.n_batch,
                         verify_reps=args.verify_reps, bandwidth_mb=args.bandwidth_mb, seed=args.seed)


def write_report(report: dict[str, Any], json_path: Path | None) -> None:
    print(format_table(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON: {json_path}")


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"dsv4 bench: error: {exc}", file=sys.stderr)
        return 2
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        report = measure(args.model, settings, progress)
    except (ValueError, OSError) as exc:
        print(f"dsv4 bench: error: {exc}", file=sys.stderr)
        return 2
    write_report(report, args.json)
    return 0
