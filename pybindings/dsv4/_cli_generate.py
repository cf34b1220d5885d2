"""`dsv4 generate MODEL -p PROMPT`: text completion streamed to the terminal.

The text goes to stdout as tokens are accepted; the statistics (tokens, tokens/s, τ, acceptance by
draft position, finish reason) go to stderr at the end, so stdout holds only the completion.
`--json` prints the whole result (OpenAI-shaped dict with the `dsv4` statistics section) instead.
The sampling/model options and the statistics line are shared with `dsv4 chat` (_cli_chat.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from dsv4.errors import Dsv4Error


def add_model_arguments(parser: argparse.ArgumentParser, default_max_tokens: int | None) -> None:
    """MODEL, context/threads and the sampling options of generate and chat."""
    parser.add_argument("model", type=Path, metavar="MODEL", help="a dsv4 or llama.cpp deepseek4 GGUF")
    parser.add_argument("-n", "--max-tokens", type=int, default=default_max_tokens,
                        help="tokens to generate at most (default: %(default)s; 0 = until EOS or a full context)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k best tokens; 0 = all (default)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (default: a fresh random seed)")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="stop before this text (repeatable)")
    parser.add_argument("--speculative", action="store_true", help="decode with the DSpark draft (lossless)")
    parser.add_argument("--draft-max", type=int, default=None,
                        help="drafts per speculative round (default and maximum: the trained block size)")
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help="adaptive draft length: verify drafts while the confidence head's probability >= this")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context length in tokens (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object (no streaming; statistics in its 'dsv4' section)")


def open_model(args: argparse.Namespace) -> Any:
    import dsv4

    if not args.model.exists():
        raise dsv4.Dsv4Error(f"no such model file: {args.model}")
    return dsv4.Model(args.model, n_ctx=args.n_ctx, n_threads=args.threads, load_draft=args.speculative)


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments create_completion / create_chat_completion take from the options."""
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "seed": args.seed, "stop": args.stop, "speculative": args.speculative,
            "draft_max": args.draft_max, "confidence_threshold": args.confidence_threshold}


def stats_line(result: dict[str, Any], finish_reason: str | None) -> str:
    """One line of statistics for stderr: tokens, tokens/s, τ and acceptance by draft position."""
    s = result["dsv4"]
    line = (f"{result['usage']['completion_tokens']} tokens, {s['tokens_per_s']:.1f} tokens/s "
            f"(prompt {result['usage']['prompt_tokens']} tokens, {s['prompt_tokens_per_s']:.1f} tokens/s), "
            f"finish: {finish_reason}")
    if s["speculative"]:
        accepted = " ".join(f"{a:.2f}" for a in s["acceptance_by_position"])
        line += (f"; speculative: tau {s['tau']:.2f}, {s['rounds']} rounds, {s['accepted']}/{s['drafted']} drafts "
                 f"accepted, by position [{accepted}], draft {s['draft_s']:.3f} s, verify {s['verify_s']:.3f} s")
    else:
        line += f"; tau {s['tau']:.2f} (plain decoding)"
    return line


def write_stream(chunks: Iterator[dict[str, Any]], out: TextIO) -> dict[str, Any]:
    """Print the text of completion chunks as they come; return the last chunk (usage, dsv4)."""
    last: dict[str, Any] = {}
    for chunk in chunks:
        text = chunk["choices"][0]["text"]
        if text:
            out.write(text)
            out.flush()
        last = chunk
    out.write("\n")
    out.flush()
    return last


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--prompt", default=None,
                        help="the text to continue (default: read from stdin); special-token text is parsed")
    add_model_arguments(parser, default_max_tokens=128)


def reporting_bad_input(command: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs body(args); a plain ValueError from the API (a bad option value or message) is the user's
    input, so it is reported in one line with exit status 2 (dsv4 errors go to dsv4.cli.main)."""
    try:
        return body(args)
    except ValueError as exc:
        if isinstance(exc, Dsv4Error):
            raise
        print(f"dsv4 {command}: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    return reporting_bad_input("generate", _run, args)


def _run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            print("dsv4 generate: give a prompt with -p PROMPT (or pipe it to stdin)", file=sys.stderr)
            return 2
        prompt = sys.stdin.read()
    with open_model(args) as model:
        if args.json:
            result = model.create_completion(prompt, **sampling(args))
            print(json.dumps(result, ensure_ascii=False, indent=2))
            return 0
        last = write_stream(model.create_completion(prompt, stream=True, **sampling(args)), sys.stdout)
        print(stats_line(last, last["choices"][0]["finish_reason"]), file=sys.stderr)
    return 0
