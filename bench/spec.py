#!/usr/bin/env python3
"""Speculative decoding benchmark: τ, acceptance by position, plain vs speculative tokens/s and the
speedup at T = 0 and T = 1, and the cost of one draft pass and one verify pass relative to one plain
decode step. Writes JSON (default build/bench/spec.json) and prints a table.

    python bench/spec.py                                  # the embedded model on its held-out prompts
    python bench/spec.py --model M.gguf [--draft mtp-M.gguf] [--prompt-ids-json P.json]

Every prompt is generated plainly and speculatively with the same seed; at T = 0 the two outputs must
be identical (checked: a mismatch is an error). Times exclude the prefill. With --runs N each cell
is the median over N repetitions.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import dsv4
from dsv4._bench import machine_info

ROOT = Path(__file__).resolve().parents[1]


def load_prompt_ids(path: Path | None, ckpt_prompts: list[list[int]] | None, n_vocab: int,
                    n_random: int = 4, length: int = 96) -> list[list[int]]:
    """Token-id prompts: a JSON file (a list of id lists, or {"prompts": [{"ids": [...]}, ...]}),
    else the embedded model's held-out prompts, else seeded random ids."""
    if path is not None:
        data = json.loads(path.read_text())
        items = data["prompts"] if isinstance(data, dict) else data
        prompts = [list(p["ids"]) if isinstance(p, dict) else list(p) for p in items]
    elif ckpt_prompts is not None:
        prompts = ckpt_prompts
    else:
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, n_vocab, length).tolist() for _ in range(n_random)]
    if not prompts or any(not p for p in prompts):
        raise ValueError("bench/spec.py needs at least one non-empty prompt")
    return prompts


def measure(model: dsv4.Model, prompts: list[list[int]], n_tokens: int, temperature: float,
            draft_max: int | None, confidence_threshold: float | None) -> dict[str, Any]:
    tokens = rounds = 0
    plain_s = spec_s = draft_s = verify_s = 0.0
    accepted_at: np.ndarray | None = None
    verified_at: np.ndarray | None = None
    taus = []
    for seed, ids in enumerate(prompts):
        plain, ps = model.generate(ids, n_tokens, temperature=temperature, seed=seed, speculative=False,
                                   ignore_eos=True)
        spec, ss = model.generate(ids, n_tokens, temperature=temperature, seed=seed, speculative=True,
                                  ignore_eos=True, draft_max=draft_max, confidence_threshold=confidence_threshold)
        if temperature == 0 and list(plain) != list(spec):
            raise AssertionError(f"prompt {seed}: greedy speculative output differs from plain")
        tokens += len(spec)
        plain_s += ps["total_s"] - ps["prefill_s"]
        spec_s += ss["total_s"] - ss["prefill_s"]
        draft_s += ss["draft_s"]
        verify_s += ss["verify_s"]
        rounds += ss["rounds"]
        acc = np.asarray(ss["accepted_at"], dtype=np.float64)
        ver = np.asarray(ss.get("verified_at", [ss["rounds"]] * len(acc)), dtype=np.float64)
        accepted_at = acc if accepted_at is None else accepted_at + acc
        verified_at = ver if verified_at is None else verified_at + ver
        taus.append(round(float(ss["tau"]), 3))
    step = plain_s / tokens
    k = int(np.count_nonzero(verified_at))
    return {
        "tokens": tokens, "rounds": rounds, "tau": tokens / rounds, "tau_per_prompt": taus,
        "acceptance_by_position": (accepted_at[:k] / np.maximum(verified_at[:k], 1)).round(4).tolist(),
        "plain_tokens_per_s": tokens / plain_s, "speculative_tokens_per_s": tokens / spec_s,
        "speedup": plain_s / spec_s,
        "draft_over_decode": draft_s / rounds / step, "verify_over_decode": verify_s / rounds / step,
    }


def _median_cells(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[-1])
    for key in ("plain_tokens_per_s", "speculative_tokens_per_s", "speedup", "draft_over_decode",
                "verify_over_decode"):
        out[key] = statistics.median(r[key] for r in runs)
    out["runs"] = len(runs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a GGUF (default: the embedded model, converted)")
    ap.add_argument("--draft", type=Path, default=None, help="a llama.cpp dflash sidecar for the draft")
    ap.add_argument("--prompt-ids-json", type=Path, default=None,
                    help="prompts as token ids (default: the embedded model's held-out prompts)")
    ap.add_argument("--max-tokens", type=int, default=200, help="generated tokens per prompt (default 200)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="repetitions, medians of the timings (default 1)")
    ap.add_argument("--draft-max", type=int, default=None)
    ap.add_argument("--confidence-threshold", type=float, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "spec.json")
    args = ap.parse_args()
    if args.max_tokens <= 0 or args.runs <= 0 or args.threads <= 0:
        ap.error("--max-tokens, --runs and --threads must be positive")

    with tempfile.TemporaryDirectory() as tmp:
        ckpt_prompts = None
        model_path = args.model
        if model_path is None:
            from dsv4._demo import cached_gguf, embedded_checkpoint, load_prompts

            ckpt = embedded_checkpoint()
            ckpt_prompts = [p["ids"] for p in load_prompts(ckpt)]
            model_path, _ = cached_gguf(ckpt, Path(tmp))
        with dsv4.Model(model_path, n_ctx=2048, n_threads=args.threads, draft=args.draft) as model:
            prompts = load_prompt_ids(args.prompt_ids_json, ckpt_prompts, model.n_vocab)
            model.generate(prompts[0], 16, speculative=True, ignore_eos=True)  # warm-up
            results = {}
            for temperature in (0.0, 1.0):
                runs = [measure(model, prompts, args.max_tokens, temperature, args.draft_max,
                                args.confidence_threshold) for _ in range(args.runs)]
                results[f"T={temperature:g}"] = _median_cells(runs)

    report: dict[str, Any] = {
        "benchmark": "speculative decoding", "model": str(args.model or "embedded default model"),
        "prompts": len(prompts), "max_tokens": args.max_tokens, "threads": args.threads,
        "draft_max": args.draft_max, "confidence_threshold": args.confidence_threshold,
        "machine": machine_info(ROOT), "results": results,
    }
    print(f"{'T':>4} {'tau':>6} {'plain tok/s':>12} {'spec tok/s':>11} {'speedup':>8} {'draft/step':>10} "
          f"{'verify/step':>11}  acceptance by position")
    for name, r in results.items():
        print(f"{name[2:]:>4} {r['tau']:6.2f} {r['plain_tokens_per_s']:12.1f} {r['speculative_tokens_per_s']:11.1f} "
              f"{r['speedup']:8.2f} {r['draft_over_decode']:10.2f} {r['verify_over_decode']:11.2f}  "
              f"{' '.join(f'{a:.2f}' for a in r['acceptance_by_position'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
