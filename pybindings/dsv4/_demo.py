"""`dsv4 demo`: the README's main command.

Until the trained default model lands (models/), the embedded default is the deterministic tiny
fixture: generate it (cached), convert it to a dsv4 GGUF (cached), describe the result and run
the engine on it (prefill + greedy decode, with tokens/s).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def _cache_dir() -> Path:
    base = os.environ.get("DSV4_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dsv4")
    return Path(base)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the generated checkpoint and GGUF are kept (default: $DSV4_CACHE or ~/.cache/dsv4)")
    parser.add_argument("--rebuild", action="store_true", help="regenerate and reconvert even if cached")


def run(args: argparse.Namespace) -> int:
    from dsv4.cli import main as cli_main
    from dsv4.testing.fixture import make_fixture

    cache = args.cache_dir or _cache_dir()
    ckpt = cache / "fixture-seed0"
    gguf_path = cache / "fixture-seed0.gguf"
    if args.rebuild or not (ckpt / "config.json").exists():
        print(f"generating the tiny V4 + DSpark checkpoint in {ckpt}")
        make_fixture(ckpt, seed=0, shards=2)
    if args.rebuild or not gguf_path.exists():
        rc = cli_main(["convert", str(ckpt), str(gguf_path), "--force"])
        if rc != 0:
            return rc
    rc = cli_main(["inspect", str(gguf_path)])
    if rc != 0:
        return rc
    return _greedy_run(gguf_path)


def _greedy_run(gguf_path: Path, n_prompt: int = 64, n_new: int = 32) -> int:
    """Runs the engine on the converted file: a prompt, then greedy tokens one at a time."""
    import time

    import numpy as np

    from dsv4 import _native

    model = _native.Model(str(gguf_path))
    ctx = _native.Context(model, n_ctx=n_prompt + n_new, n_threads=0)
    prompt = np.random.default_rng(0).integers(0, model.n_vocab, n_prompt).astype(np.int32)
    t0 = time.perf_counter()
    logits, _ = ctx.decode(prompt, 0, np.array([n_prompt - 1], dtype=np.int32))
    t1 = time.perf_counter()
    out = []
    for _ in range(n_new):
        tok = int(logits[-1].argmax())
        out.append(tok)
        logits, _ = ctx.decode(np.array([tok], dtype=np.int32), ctx.n_past, np.array([0], dtype=np.int32))
    t2 = time.perf_counter()
    print(f"engine:          prefill {n_prompt} tokens at {n_prompt / (t1 - t0):.0f} tok/s, "
          f"greedy decode {n_new} tokens at {n_new / (t2 - t1):.0f} tok/s (random weights: the tokens mean nothing)")
    print(f"  greedy tokens: {out[:16]} ...")
    return 0
