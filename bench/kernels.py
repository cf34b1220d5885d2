#!/usr/bin/env python3
"""CPU kernel benchmark: builds bench/kernels.cpp with the engine's CPU sources, runs it, writes JSON.

The program measures, in one run: a plain memory-read loop (before and after the kernels),
matmul GB/s and GFLOP/s per weight type for 1 and 2 threads, R = 1 (decode) and R = 6
(verification), on a matrix that fits in cache and one far beyond it, the expert-batched
MoE path, and (AVX-512 CPUs) the compute peak: bf16 / int8 dot products one core issues. This script adds the machine description and derived ratios (fraction of the read
bandwidth, verify6 / decode1 cost) and prints a table.

    python bench/kernels.py                 # full run (256 MB matrices), JSON to build/bench/
    python bench/kernels.py --quick         # 64 MB matrices, fewer repetitions
    python bench/kernels.py --isa-compare   # also scalar / AVX2 / AVX-512 side by side (1 thread)
    python bench/kernels.py --runs 3        # medians over 3 runs (a shared machine is noisy)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(out_dir: Path) -> Path:
    """Compiles the benchmark with the same sources and flags as the Release library (no -march)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        sys.exit("kernels.py: no C++ compiler found (set CXX)")
    sources = [ROOT / "bench" / "kernels.cpp", ROOT / "native" / "src" / "dsv4-error.cpp",
               ROOT / "native" / "src" / "dsv4-types.cpp"]
    sources += sorted((ROOT / "native" / "src" / "cpu").glob("*.cpp"))
    exe = out_dir / "bench_kernels"
    out_dir.mkdir(parents=True, exist_ok=True)
    newest = max(p.stat().st_mtime for p in sources + list((ROOT / "native" / "src").rglob("*.h")))
    if exe.exists() and exe.stat().st_mtime > newest:
        return exe
    cmd = [cxx, "-std=c++17", "-O3", "-DNDEBUG", "-pthread",
           f"-I{ROOT / 'native' / 'include'}", f"-I{ROOT / 'native' / 'src'}",
           *map(str, sources), "-o", str(exe)]
    print("building:", " ".join(cmd[:6]), "...", file=sys.stderr)
    subprocess.run(cmd, check=True)
    return exe


def machine() -> dict:
    from dsv4._bench import machine_info

    return machine_info(ROOT)


def combine(runs: list[dict]) -> dict:
    """Median over runs of every timing (and of the bandwidths); rates recomputed from the median."""
    def med(values):
        v = sorted(values)
        n = len(v)
        return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])

    res = runs[0]
    res["runs"] = len(runs)
    for key in ("read_gbps_before", "read_gbps_after", "read_prefetch_gbps_before", "read_prefetch_gbps_after"):
        res[key] = {t: med([r[key][t] for r in runs]) for t in res[key]}
    for section, rate in (("matmul", "weight_bytes"), ("moe", "bytes")):
        for i, case in enumerate(res.get(section, [])):
            secs = [r[section][i]["seconds"] for r in runs]
            case["seconds"] = med(secs)
            case["seconds_all_runs"] = secs
            case["gbps"] = case[rate] / case["seconds"] / 1e9
            if section == "matmul":
                case["gflops"] = 2.0 * case["n_out"] * case["n_in"] * case["rows"] / case["seconds"] / 1e9
    return res


def derive(res: dict) -> None:
    """Adds fraction-of-bandwidth and verify/decode ratios in place."""
    # the limit: the better of the plain and the prefetching read loop, averaged before/after
    bw = {}
    for plain, pf in (("read_gbps_before", "read_prefetch_gbps_before"), ("read_gbps_after", "read_prefetch_gbps_after")):
        for t, v in res[plain].items():
            bw.setdefault(int(t), []).append(max(v, res[pf][t]))
    res["read_gbps"] = {str(t): sum(v) / len(v) for t, v in bw.items()}
    by_key = {}
    for r in res["matmul"]:
        r["frac_of_read_bw"] = r["gbps"] / res["read_gbps"][str(r["threads"])]
        by_key[(r["type"], r["isa"], r["size"], r["threads"], r["rows"])] = r
    ratios = []
    for (typ, isa, size, thr, rows), r in by_key.items():
        if rows == 1:
            other = by_key.get((typ, isa, size, thr, 6))
            if other:
                ratios.append({"type": typ, "isa": isa, "size": size, "threads": thr,
                               "verify6_over_decode1": other["seconds"] / r["seconds"]})
    res["ratios"] = ratios
    moe = {(m["threads"], m["tokens"]): m for m in res.get("moe", [])}
    res["moe_ratios"] = [{"threads": t, "tokens6_over_tokens1": moe[(t, 6)]["seconds"] / moe[(t, 1)]["seconds"]}
                         for (t, n) in moe if n == 1 and (t, 6) in moe]


def table(res: dict) -> str:
    lines = [f"read bandwidth (GB/s, best of plain / prefetching loop): "
             + ", ".join(f"{t} thr {v:.2f}" for t, v in res["read_gbps"].items())]
    if "peak" in res:
        lines.append(f"compute peak, 1 thread: bf16 dot {res['peak']['peak_bf16_gmacs']:.1f} GMAC/s, "
                     f"int8 dot {res['peak']['peak_int8_gmacs']:.1f} GMAC/s")
    lines.append(f"{'type':6} {'isa':6} {'size':5} {'thr':>3} {'R':>2} {'us':>10} {'GB/s':>7} {'GFLOP/s':>8} {'of bw':>6}")
    for r in res["matmul"]:
        lines.append(f"{r['type']:6} {r['isa']:6} {r['size']:5} {r['threads']:3d} {r['rows']:2d} "
                     f"{r['seconds'] * 1e6:10.1f} {r['gbps']:7.2f} {r['gflops']:8.2f} {r['frac_of_read_bw']:6.2f}")
    lines.append("verify6 / decode1 time:")
    for q in res["ratios"]:
        lines.append(f"  {q['type']:6} {q['isa']:6} {q['size']:5} {q['threads']} thr: {q['verify6_over_decode1']:.2f}")
    for m in res.get("moe", []):
        lines.append(f"moe mxfp4 32x[1024,2048] top-6: {m['tokens']} token(s), {m['threads']} thr: "
                     f"{m['experts_touched']} experts, {m['seconds'] * 1e6:.1f} us, {m['gbps']:.2f} GB/s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "kernels.json")
    ap.add_argument("--quick", action="store_true", help="64 MB large matrices, 3 repetitions")
    ap.add_argument("--isa-compare", action="store_true", help="also run the other ISAs (1 thread, large)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rows", default="1,6")
    ap.add_argument("--types", default="f32,f16,bf16,fp8,fp8_pk,q8_0,mxfp4,mxfp4_pk")
    ap.add_argument("--large-mb", type=float, default=None)
    ap.add_argument("--runs", type=int, default=1,
                    help="run the program this many times; each case keeps its median time over runs")
    args = ap.parse_args()

    exe = build(ROOT / "build" / "bench")
    cmd = [str(exe), "--threads", args.threads, "--rows", args.rows, "--types", args.types]
    if args.quick:
        cmd.append("--quick")
    if args.isa_compare:
        cmd.append("--isa-compare")
    if args.large_mb:
        cmd += ["--large-mb", str(args.large_mb)]
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs = [json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, check=True).stdout) for _ in range(args.runs)]
    res = combine(runs)
    # the compute ceiling next to the bandwidth one: dot-product instructions one core issues per second
    peak = subprocess.run([str(exe), "--peak"], stdout=subprocess.PIPE, check=False)
    if peak.returncode == 0:
        res["peak"] = json.loads(peak.stdout)
    res["machine"] = machine()
    res["started"] = started
    res["command"] = cmd[1:]
    derive(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
