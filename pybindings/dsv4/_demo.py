"""`dsv4 demo`: the README's main command.

Runs the embedded default model (models/pystd-tiny: a small V4 target + DSpark draft trained by
tools/train_tiny.py on Python's standard library, shipped inside the wheel as dsv4/models/): the
checkpoint is converted to a dsv4 GGUF once and cached under $DSV4_CACHE (default ~/.cache/dsv4),
keyed by a hash of the checkpoint's files. Then a held-out code prompt (a stdlib file the model
never saw) is continued plainly and with speculative decoding at temperature 0 and 1, printing
tokens/s of both, the speedup, τ (tokens per target pass) and the acceptance by draft position.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4.errors import MissingComponentError

MODEL_NAME = "pystd-tiny"


def _cache_dir() -> Path:
    base = os.environ.get("DSV4_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dsv4")
    return Path(base)


def embedded_checkpoint(name: str = MODEL_NAME) -> Path:
    """The shipped checkpoint directory: dsv4/models/<name> in an installed wheel, else the
    repository's models/<name> (editable installs and source checkouts)."""
    from importlib import resources

    candidates = []
    try:
        candidates.append(Path(str(resources.files("dsv4") / "models" / name)))
    except (ModuleNotFoundError, TypeError):
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "models" / name)
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise MissingComponentError(f"the embedded model {name!r} is not installed (looked in "
                                f"{', '.join(str(c) for c in candidates)}); reinstall dsv4 or pass --checkpoint DIR")


def checkpoint_hash(ckpt: Path) -> str:
    """sha256 over every file's name and bytes, in name order (any change reconverts)."""
    h = hashlib.sha256()
    for f in sorted(p for p in ckpt.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cached_gguf(ckpt: Path, cache: Path, rebuild: bool = False) -> tuple[Path, bool]:
    """(GGUF path, converted now?): the conversion of `ckpt`, made once per content hash."""
    from dsv4.convert.main import convert

    out = cache / f"{ckpt.name}-{checkpoint_hash(ckpt)[:16]}.gguf"
    if out.exists() and not rebuild:
        return out, False
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.tmp{os.getpid()}.gguf")
    try:
        convert(ckpt, tmp, force=True)
        os.replace(tmp, out)           # atomic: a killed conversion never leaves a half file
    finally:
        tmp.unlink(missing_ok=True)
    return out, True


def load_prompts(ckpt: Path) -> list[dict[str, Any]]:
    """Held-out prompts written by tools/train_tiny.py (prompts.json: source file + text)."""
    f = ckpt / "prompts.json"
    if not f.is_file():
        return []
    return list(json.loads(f.read_text())["prompts"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a native V4 + DSpark checkpoint dir to demo instead of the embedded model")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the converted GGUF is kept (default: $DSV4_CACHE or ~/.cache/dsv4)")
    parser.add_argument("--rebuild", action="store_true", help="reconvert even if cached")
    parser.add_argument("--prompt", default=None, help="continue this text instead of a held-out prompt")
    parser.add_argument("--prompt-index", type=int, default=0, help="which held-out prompt (default: %(default)s)")
    parser.add_argument("-n", "--max-tokens", type=int, default=160, help="tokens per run (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of the T=1 runs (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    parser.add_argument("--no-text", action="store_true", help="print only the statistics, not the generated text")


@dataclass
class RunResult:
    tokens: list[int]
    tokens_per_s: float
    tau: float
    acceptance: list[float]      # by draft position: accepted / rounds
    stats: dict[str, Any]


def _generate(model: Any, ids: list[int], n: int, temperature: float, seed: int, speculative: bool) -> RunResult:
    out, st = model.generate(ids, n, temperature=temperature, seed=seed, speculative=speculative, ignore_eos=True)
    decode_s = float(st["total_s"]) - float(st["prefill_s"])
    rounds = int(st.get("rounds", 0))
    gamma = _block_size(model) if speculative else 0
    acc = [int(a) / rounds if rounds else 0.0 for a in list(st.get("accepted_at", []))[:gamma]]
    return RunResult(out, len(out) / decode_s if decode_s > 0 else 0.0, float(st.get("tau", 1.0)), acc, st)


def _block_size(model: Any) -> int:
    from dsv4.completion import _block_size as block_size_of

    return block_size_of(model.metadata)


def run(args: argparse.Namespace) -> int:
    from dsv4._cli_generate import reporting_bad_input

    return reporting_bad_input("demo", _run, args)


def _run(args: argparse.Namespace) -> int:
    import dsv4

    if args.max_tokens <= 0:
        raise ValueError(f"--max-tokens must be positive, got {args.max_tokens}")
    ckpt = args.checkpoint or embedded_checkpoint()
    if not (ckpt / "config.json").is_file():
        raise MissingComponentError(f"{ckpt}: not a checkpoint directory (no config.json)")
    gguf_path, fresh = cached_gguf(ckpt, args.cache_dir or _cache_dir(), args.rebuild)
    print(f"model: {ckpt} -> {gguf_path} ({'converted now' if fresh else 'cached'})")

    if args.prompt is not None:
        text, source = args.prompt, "--prompt"
    else:
        prompts = load_prompts(ckpt)
        if not prompts:
            raise MissingComponentError(f"{ckpt} has no prompts.json; pass --prompt TEXT")
        if not 0 <= args.prompt_index < len(prompts):
            raise ValueError(f"--prompt-index must be in 0..{len(prompts) - 1}, got {args.prompt_index}")
        text, source = prompts[args.prompt_index]["text"], f"held-out {prompts[args.prompt_index]['source']}"

    with dsv4.Model(gguf_path, n_ctx=4096, n_threads=args.threads) as model:
        ids = model.tokenize(text)
        if len(ids) + args.max_tokens + 8 > model.n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) + --max-tokens {args.max_tokens} exceed the context")
        gamma = _block_size(model)
        print(f"draft: DSpark block size {gamma}; threads: {args.threads or os.cpu_count()}")
        print(f"prompt ({source}, {len(ids)} tokens):")
        print(_indent(text))
        for temperature in (0.0, 1.0):
            _generate(model, ids, 8, temperature, args.seed, True)          # warm-up (page in the weights)
            plain = _generate(model, ids, args.max_tokens, temperature, args.seed, False)
            spec = _generate(model, ids, args.max_tokens, temperature, args.seed, True)
            speedup = spec.tokens_per_s / plain.tokens_per_s if plain.tokens_per_s > 0 else 0.0
            label = "0 (greedy)" if temperature == 0 else f"{temperature:g} (seed {args.seed})"
            print(f"\n=== temperature {label} ===")
            print(f"plain:        {len(plain.tokens)} tokens, {plain.tokens_per_s:7.1f} tokens/s")
            print(f"speculative:  {len(spec.tokens)} tokens, {spec.tokens_per_s:7.1f} tokens/s, "
                  f"speedup {speedup:.2f}x, tau {spec.tau:.2f} tokens per target pass, "
                  f"{spec.stats.get('rounds', 0)} rounds")
            print("acceptance by draft position: " + " ".join(f"{a:.2f}" for a in spec.acceptance))
            if temperature == 0:
                same = spec.tokens == plain.tokens
                print(f"speculative == plain tokens: {'yes' if same else 'NO'} (greedy decoding is lossless)")
            if not args.no_text:
                print("continuation (speculative):")
                print(_indent(model.detokenize(spec.tokens)))
    return 0


def _indent(text: str) -> str:
    return "\n".join("  | " + line for line in text.split("\n"))
