#!/usr/bin/env python3
"""Write the deterministic tiny DeepSeek-V4 + DSpark checkpoint (native HF format) to OUT_DIR.

Usage: python tools/make_fixture.py OUT_DIR [--seed N] [--shards K]
"""
from __future__ import annotations

import argparse

from dsv4.testing.fixture import make_fixture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    out = make_fixture(args.out_dir, seed=args.seed, shards=args.shards)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
