"""`dsv4 convert`: a native-format DeepSeek-V4 (+ DSpark) checkpoint -> GGUF.

    dsv4 convert CHECKPOINT_DIR OUT.gguf [--no-draft] [--outtype fp8|q8_0|bf16] [--llama-cpp]
                 [--force] [--quiet] [--allow-unknown]

Everything is validated before the first byte is written (plan.py). Each output goes to
`<name>.tmp` and is renamed only once every output is complete; on any error (or Ctrl-C) the
temporary files are removed, so a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dsv4.errors import ConversionError

from . import arch
from .arch import Outtype
from .checkpoint import Checkpoint
from .plan import Plan, build_plan
from .vocab import load_vocab
from .writer import StreamingGGUFWriter, TensorHeader

TMP_SUFFIX = ".tmp"


@dataclass
class ConvertResult:
    outputs: list[Path]
    tensors: int
    bytes_written: int
    seconds: float
    draft_stages: int
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def _progress_bar(total: int, enabled: bool) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert", dynamic_ncols=True)
    return bar.update, bar.close


def convert(checkpoint_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, draft: bool = True,
            outtype: str | Outtype | None = None, llama_cpp: bool = False, force: bool = False,
            allow_unknown: bool = False, progress: bool = False,
            log: Callable[[str], None] | None = None) -> ConvertResult:
    """Convert a checkpoint directory; returns what was written. Raises ConversionError.

    `outtype` defaults to fp8 (dsv4 layout) or q8_0 (llama.cpp layout). `log` receives notes and
    warnings (skipped unknown tensors, Q8_0 -> BF16 fallbacks).
    """
    t0 = time.perf_counter()
    out = Path(out)
    emit = log or (lambda msg: None)
    try:
        ot = Outtype(outtype) if outtype is not None else (Outtype.Q8_0 if llama_cpp else Outtype.FP8)
    except ValueError:
        raise ConversionError(f"unknown outtype {outtype!r} (use {', '.join(o.value for o in Outtype)})") from None
    if llama_cpp and ot is Outtype.FP8:
        raise ConversionError("--outtype fp8 cannot be used with --llama-cpp: llama.cpp has no FP8 type "
                              "(use q8_0 or bf16)")
    if not out.parent.is_dir():
        raise ConversionError(f"{out.parent}: output directory does not exist")
    if out.suffix != ".gguf":
        raise ConversionError(f"{out}: the output file name must end in .gguf")

    with Checkpoint(checkpoint_dir) as ckpt:
        vocab = load_vocab(ckpt)
        plan = build_plan(ckpt, vocab, out, llama_cpp=llama_cpp, outtype=ot, draft=draft,
                          allow_unknown=allow_unknown)
        for o in plan.outputs:
            if o.path.exists() and not force:
                raise ConversionError(f"{o.path}: already exists (pass --force to overwrite)")
            if o.path.resolve() in {p.resolve() for p in ckpt.shard_paths()}:
                raise ConversionError(f"{o.path}: refusing to overwrite an input file")
        if plan.skipped:
            shown = ", ".join(plan.skipped[:8]) + (f", ... ({len(plan.skipped)} in all)" if len(plan.skipped) > 8 else "")
            emit(f"warning: skipping {len(plan.skipped)} unknown tensor(s): {shown}")
        for note in plan.notes:
            emit(f"note: {note}")
        if vocab.chat_template_is_ours:
            emit("note: the checkpoint ships no chat template; wrote dsv4's V4 chat template")
        written = _write_all(plan, progress)
    for o in plan.outputs:
        emit(f"wrote {o.path} ({o.arch}, {len(o.tensors)} tensors, {o.nbytes / 2**20:.1f} MiB of tensor data)")
    return ConvertResult([o.path for o in plan.outputs], sum(len(o.tensors) for o in plan.outputs), written,
                         time.perf_counter() - t0, plan.n_stages, plan.skipped, plan.notes)


def _write_all(plan: Plan, progress: bool) -> int:
    tmps = [_tmp(o.path) for o in plan.outputs]
    total = sum(o.nbytes for o in plan.outputs)
    update, close_bar = _progress_bar(total, progress)
    writer: StreamingGGUFWriter | None = None
    try:
        for o, tmp in zip(plan.outputs, tmps):
            headers = [TensorHeader(t.name, t.gtype, t.shape, t.nbytes) for t in o.tensors]
            writer = StreamingGGUFWriter(tmp, o.arch, o.keys, headers, update)
            for t in o.tensors:
                writer.begin_tensor(t.name)
                t.produce(writer)
            writer.finish()
            writer = None
        for o, tmp in zip(plan.outputs, tmps):
            os.replace(tmp, o.path)
        return total
    except BaseException:
        if writer is not None:
            writer.abort()
        for tmp in tmps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        raise
    finally:
        close_bar()


# -- command line ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (config.json, *.safetensors, tokenizer)")
    parser.add_argument("out", type=Path, help="output GGUF (with --llama-cpp the draft goes to mtp-<name> beside it)")
    parser.add_argument("--no-draft", dest="draft", action="store_false", help="leave the DSpark draft out")
    parser.add_argument("--outtype", choices=[o.value for o in Outtype], default=None,
                        help="what FP8 weights become: fp8 (kept, dsv4 default), q8_0 (llama.cpp default) or bf16")
    parser.add_argument("--llama-cpp", action="store_true",
                        help="write upstream llama.cpp's layout: deepseek4 target + dflash sidecar")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    parser.add_argument("--allow-unknown", action="store_true",
                        help="skip tensors the converter does not know (with a warning) instead of failing")


def run(args: argparse.Namespace) -> int:
    quiet = bool(args.quiet)

    def log(msg: str) -> None:
        if not quiet or msg.startswith("warning"):
            print(f"dsv4 convert: {msg}", file=sys.stderr)

    result = convert(args.checkpoint, args.out, draft=args.draft, outtype=args.outtype, llama_cpp=args.llama_cpp,
                     force=args.force, allow_unknown=args.allow_unknown,
                     progress=not quiet and sys.stderr.isatty(), log=log)
    if not quiet:
        mb = result.bytes_written / 1e6
        print(f"converted {args.checkpoint} in {result.seconds:.1f} s ({mb / max(result.seconds, 1e-9):.0f} MB/s): "
              + ", ".join(str(p) for p in result.outputs))
    return 0


__all__ = ["ConvertResult", "convert", "add_arguments", "run", "arch"]
