#!/usr/bin/env python3
"""τ, acceptance by position, speedup and draft/verify cost of the embedded model on its held-out
prompts (the numbers in models/pystd-tiny/README.md). bench/spec.py is the general tool.

    python tools/spec_tiny.py [--tokens 200] [--threads 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import dsv4
from dsv4._demo import cached_gguf, embedded_checkpoint, load_prompts


def measure(model: dsv4.Model, prompts: list[list[int]], n: int, temperature: float) -> dict[str, Any]:
    tokens = rounds = 0
    plain_s = spec_s = draft_s = verify_s = 0.0
    accepted = np.zeros(5)
    taus = []
    for seed, ids in enumerate(prompts):
        plain, ps = model.generate(ids, n, temperature=temperature, seed=seed, speculative=False, ignore_eos=True)
        spec, ss = model.generate(ids, n, temperature=temperature, seed=seed, speculative=True, ignore_eos=True)
        if temperature == 0 and plain != spec:
            raise AssertionError(f"prompt {seed}: greedy speculative output differs from plain")
        tokens += n
        plain_s += ps["total_s"] - ps["prefill_s"]
        spec_s += ss["total_s"] - ss["prefill_s"]
        draft_s += ss["draft_s"]
        verify_s += ss["verify_s"]
        rounds += ss["rounds"]
        accepted += np.array(ss["accepted_at"][:5], dtype=np.float64)
        taus.append(round(float(ss["tau"]), 2))
    step = plain_s / tokens                       # one plain decode step
    return {"tau_pooled": tokens / rounds, "tau_per_prompt": taus,
            "acceptance_by_position": (accepted / rounds).round(3).tolist(),
            "plain_tokens_per_s": tokens / plain_s, "speculative_tokens_per_s": tokens / spec_s,
            "speedup": plain_s / spec_s, "draft_over_decode": draft_s / rounds / step,
            "verify_over_decode": verify_s / rounds / step}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ckpt = embedded_checkpoint()
    prompts = [p["ids"] for p in load_prompts(ckpt)]
    with tempfile.TemporaryDirectory() as tmp:
        gguf, _ = cached_gguf(ckpt, Path(tmp))
        with dsv4.Model(gguf, n_ctx=1024, n_threads=args.threads) as model:
            model.generate(prompts[0], 16, speculative=True, ignore_eos=True)     # warm-up
            result = {f"T={t:g}": measure(model, prompts, args.tokens, t) for t in (0.0, 1.0)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
