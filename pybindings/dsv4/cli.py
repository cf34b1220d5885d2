"""The `dsv4` command line: one sub-command per job, each with --help."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from dsv4.errors import Dsv4Error

# Each sub-command module exposes add_arguments(parser) and run(args) -> int. They are imported
# lazily so `dsv4 --help` stays fast and a broken optional dependency only breaks its command.
_COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("dsv4.convert.main", "convert a DeepSeek-V4 HF checkpoint to GGUF"),
    "inspect": ("dsv4.convert.inspect", "describe a GGUF file (architecture, tensors, draft)"),
    "generate": ("dsv4._cli_generate", "complete a text prompt, streamed, with tokens/s and speculative statistics"),
    "chat": ("dsv4._cli_chat", "chat with DeepSeek-V4's chat encoding (reasoning none/high/max), streamed"),
    "demo": ("dsv4._demo", "convert the embedded model and run it"),
    "bench": ("dsv4._bench", "decode / verify / prefill speed of a GGUF against the memory-bandwidth limit"),
}


def _load(module_name: str):
    import importlib

    return importlib.import_module(module_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsv4", description="DeepSeek-V4 + DSpark toolkit")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        _load(module_name).add_arguments(p)
    return parser


def _version() -> str:
    from dsv4 import __version__

    return f"dsv4 {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    run: Callable[[argparse.Namespace], int] = _load(args._module).run
    try:
        return run(args)
    except Dsv4Error as exc:
        print(f"dsv4 {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dsv4 {args.command}: interrupted", file=sys.stderr)
        return 130
