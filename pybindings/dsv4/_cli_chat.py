"""`dsv4 chat MODEL`: a conversation with DeepSeek-V4's chat encoding, streamed to the terminal.

Interactive when stdin is a terminal (one line per user turn; an empty line, "/exit" or Ctrl-D
ends; Ctrl-C stops the current reply and keeps the conversation). Otherwise one message is read:
`-p TEXT`, or all of stdin, and answered once. The answer streams to stdout; the reasoning block
(`--reasoning high|max`) streams to stderr, as do the statistics after each reply, so stdout holds
only answers. `--json` prints each reply as a chat.completion JSON object instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from dsv4._cli_generate import add_model_arguments, open_model, reporting_bad_input, sampling, stats_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--prompt", default=None,
                        help="answer this one message and exit (default: interactive on a terminal, else stdin)")
    parser.add_argument("--reasoning", choices=("none", "high", "max"), default="none",
                        help="none: answer directly; high / max: think first (max adds the maximum-effort preface)")
    parser.add_argument("-s", "--system", default=None, help="system prompt")
    add_model_arguments(parser, default_max_tokens=0)


def _reply(model: Any, messages: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Answer once, streaming; returns the assistant message (with reasoning_content)."""
    kwargs = {**sampling(args), "reasoning": args.reasoning}
    if args.json:
        result = model.create_chat_completion(messages, **kwargs)
        print(json.dumps(result, ensure_ascii=False, indent=2), flush=True)
        return result["choices"][0]["message"]
    parts: dict[str, list[str]] = {"reasoning_content": [], "content": []}
    last: dict[str, Any] = {}
    in_reasoning = False
    # closing(): a Ctrl-C in this loop stops the generation now, whatever holds the traceback.
    with contextlib.closing(model.create_chat_completion(messages, stream=True, **kwargs)) as stream:
        for chunk in stream:
            delta = chunk["choices"][0]["delta"]
            if delta.get("reasoning_content"):
                if not in_reasoning:
                    sys.stderr.write("[reasoning] ")
                    in_reasoning = True
                sys.stderr.write(delta["reasoning_content"])
                sys.stderr.flush()
                parts["reasoning_content"].append(delta["reasoning_content"])
            if delta.get("content"):
                if in_reasoning:
                    sys.stderr.write("\n[answer]\n")
                    sys.stderr.flush()
                    in_reasoning = False
                sys.stdout.write(delta["content"])
                sys.stdout.flush()
                parts["content"].append(delta["content"])
            last = chunk
    sys.stdout.write("\n")
    sys.stdout.flush()
    if in_reasoning:
        sys.stderr.write("\n")
    print(stats_line(last, last["choices"][0]["finish_reason"]), file=sys.stderr)
    message = {"role": "assistant", "content": "".join(parts["content"])}
    if args.reasoning != "none":
        message["reasoning_content"] = "".join(parts["reasoning_content"])
    return message


def run(args: argparse.Namespace) -> int:
    return reporting_bad_input("chat", _run, args)


def _run(args: argparse.Namespace) -> int:
    history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = args.prompt is None and sys.stdin.isatty()
    with open_model(args) as model:
        if not interactive:
            text = args.prompt if args.prompt is not None else sys.stdin.read()
            _reply(model, [*history, {"role": "user", "content": text}], args)
            return 0
        print(f"dsv4 chat with {args.model} (reasoning: {args.reasoning}); empty line or Ctrl-D to quit",
              file=sys.stderr)
        while True:
            try:
                text = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            if not text.strip() or text.strip() == "/exit":
                return 0
            turn = [*history, {"role": "user", "content": text}]
            try:
                answer = _reply(model, turn, args)
            except KeyboardInterrupt:
                print("\n[interrupted]", file=sys.stderr)
                continue  # the turn is dropped; the model stays usable
            history = [*turn, answer]
