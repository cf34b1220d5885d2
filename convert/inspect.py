"""`dsv4 inspect FILE.gguf`: what a GGUF holds, read with gguf-py's GGUFReader.

Architecture, parameter count, tensor types with their bytes, context length, the DSpark draft
(in the file for dsv4; a `mtp-<name>` sidecar beside a deepseek4 target; the keys of a dflash
draft), and a tokenizer summary. `--json` prints the same as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from dsv4.errors import FormatError

from . import arch

_TOKENIZER_ARRAYS = {arch.KEY_TOK_TOKENS, arch.KEY_TOK_TYPES, arch.KEY_TOK_MERGES}


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A summary of one GGUF file as a dict (what `dsv4 inspect --json` prints)."""
    import gguf

    path = Path(path)
    try:
        r = gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except Exception as exc:  # gguf-py raises ValueError/struct errors on malformed files
        raise FormatError(f"{path}: not a readable GGUF file ({exc})") from exc
    kv: dict[str, Any] = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        # The big tokenizer arrays are only counted (below), not decoded.
        kv[name] = f.contents() if name not in _TOKENIZER_ARRAYS and name != arch.KEY_TOK_HF_JSON else None
    archname = kv.get(arch.KEY_ARCHITECTURE, "?")
    types: dict[str, dict[str, int]] = {}
    params = scale_params = 0
    for t in r.tensors:
        tname = t.tensor_type.name
        entry = types.setdefault(tname, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(t.n_bytes)
        if t.name.endswith(arch.SCALE_SUFFIX):
            scale_params += int(t.n_elements)  # FP8 block scales: metadata of the weight beside them
        else:
            params += int(t.n_elements)
    prefix = f"{archname}."
    model_keys = {k[len(prefix):]: v for k, v in kv.items() if k.startswith(prefix)}

    draft: dict[str, Any] = {"present": False}
    if archname == arch.ARCH_DSV4 and "dspark.stage_count" in model_keys:
        draft = {"present": True, "where": "in this file",
                 "keys": {k: v for k, v in model_keys.items() if k.startswith("dspark.")}}
    elif archname == arch.ARCH_DEEPSEEK4:
        side = arch.sidecar_path(path)
        if side.exists():
            draft = {"present": True, "where": f"sidecar {side.name}"}
    elif archname == arch.ARCH_DFLASH:
        draft = {"present": True, "where": "this file is the draft",
                 "keys": {k: model_keys[k] for k in ("block_size", "target_layers", "sample_from_anchor",
                                                     "has_confidence_head", "block_count") if k in model_keys}}
        if arch.KEY_TOK_MASK in kv:
            draft["keys"]["mask_token_id"] = kv[arch.KEY_TOK_MASK]

    def count(key: str) -> int:
        f = r.fields.get(key)
        return len(f.data) if f is not None else 0

    template = kv.get(arch.KEY_CHAT_TEMPLATE)
    tokenizer = {
        "model": kv.get(arch.KEY_TOK_MODEL), "pre": kv.get(arch.KEY_TOK_PRE),
        "tokens": count(arch.KEY_TOK_TOKENS), "merges": count(arch.KEY_TOK_MERGES),
        "bos_token_id": kv.get(arch.KEY_TOK_BOS), "eos_token_id": kv.get(arch.KEY_TOK_EOS),
        "padding_token_id": kv.get(arch.KEY_TOK_PAD),
        "huggingface_json": arch.KEY_TOK_HF_JSON in r.fields,
        "chat_template_chars": len(template) if isinstance(template, str) else 0,
    }
    return {
        "path": str(path), "file_bytes": path.stat().st_size, "architecture": archname,
        "name": kv.get(arch.KEY_NAME), "tensor_count": len(r.tensors), "parameters": params,
        "fp8_scale_elements": scale_params, "types": types,
        "context_length": model_keys.get("context_length"), "block_count": model_keys.get("block_count"),
        "draft": draft, "tokenizer": tokenizer,
        "keys": {k: v for k, v in kv.items() if v is not None and not k.startswith("tokenizer.")},
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n / 1e3:.1f} K" if n >= 1e3 else str(n)


def render(d: dict[str, Any]) -> str:
    lines = [
        f"file:            {d['path']} ({_human(d['file_bytes'])})",
        f"architecture:    {d['architecture']}" + (f"  (name: {d['name']})" if d["name"] else ""),
        f"blocks:          {d['block_count']}",
        f"context length:  {d['context_length']}",
        f"parameters:      {_count(d['parameters'])} ({d['parameters']:,})"
        + (f" + {d['fp8_scale_elements']:,} FP8 block scales" if d["fp8_scale_elements"] else ""),
        f"tensors:         {d['tensor_count']}",
        "  type      tensors        bytes",
    ]
    for name, t in sorted(d["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"  {name:<8} {t['tensors']:>8} {_human(t['bytes']):>12}")
    dr = d["draft"]
    if dr["present"]:
        lines.append(f"draft:           DSpark, {dr['where']}")
        for k, v in (dr.get("keys") or {}).items():
            lines.append(f"  {k} = {v}")
    else:
        lines.append("draft:           none")
    tk = d["tokenizer"]
    lines.append(f"tokenizer:       {tk['model']} / {tk['pre']}, {tk['tokens']} tokens, {tk['merges']} merges, "
                 f"bos {tk['bos_token_id']}, eos {tk['eos_token_id']}, pad {tk['padding_token_id']}")
    lines.append(f"  chat template: {tk['chat_template_chars']} chars; tokenizer.json embedded: "
                 f"{'yes' if tk['huggingface_json'] else 'no'}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a GGUF file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    d = describe(args.file)
    if args.json:
        print(json.dumps(d, indent=2, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else str(o)))
    else:
        print(render(d))
    return 0
