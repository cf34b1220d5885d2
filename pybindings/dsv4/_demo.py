"""`dsv4 demo`: the README's main command.

Until the trained default model lands (models/), the embedded default is the deterministic tiny
fixture: generate it (cached), convert it to a dsv4 GGUF (cached), and describe the result.
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
    return cli_main(["inspect", str(gguf_path)])
