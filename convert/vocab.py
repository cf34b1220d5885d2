"""Tokenizer metadata for the GGUF: `tokenizer.ggml.*` from tokenizer.json, special ids, chat template.

Reads tokenizer.json directly (no `transformers`): the byte-level BPE vocabulary, its added
tokens and merges. Token types follow llama.cpp's conventions (special added tokens are CONTROL,
holes in the id range are UNUSED `[PAD<id>]`), so llama.cpp's `gpt2` tokenizer rebuilds the same
vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dsv4.errors import ConversionError

from . import arch
from .checkpoint import TOKENIZER_FILE, Checkpoint

# llama.cpp token types (gguf-py TokenType).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5

# V4's special tokens (v4-model.md §12.1); the chat template is written with these texts.
BOS_TEXT = "<｜begin▁of▁sentence｜>"
EOS_TEXT = "<｜end▁of▁sentence｜>"
USER_TEXT = "<｜User｜>"
ASSISTANT_TEXT = "<｜Assistant｜>"
THINK_TEXT, END_THINK_TEXT = "<think>", "</think>"

# V4 ships no Jinja template (its chat format is a Python encoder, encoding_dsv4.py), so we write
# one that renders the same layout (v4-model.md §12.2):
#   BOS + system + <｜User｜>user + <｜Assistant｜></think>reply<｜end▁of▁sentence｜> ...
# Earlier assistant turns drop their reasoning (chat mode); an assistant turn after the last user
# message keeps `<think>reasoning</think>` when thinking is on. The generation prompt ends with
# `<｜Assistant｜></think>` (chat) or `<｜Assistant｜><think>` (thinking: `thinking` or
# `enable_thinking` true). Tool schemas/DSML calls are not rendered (see docs/llama-cpp-compat.md);
# tool results are put in the next user turn as <tool_result>…</tool_result>.
CHAT_TEMPLATE = (
    "{%- set thinking = thinking if thinking is defined else (enable_thinking if enable_thinking is defined else false) -%}"
    "{%- set ns = namespace(last_user=-1, system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- if m['role'] in ['system', 'developer'] -%}{%- set ns.system = ns.system + m['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "@BOS@{{ ns.system }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}"
    "@USER@{{ m['content'] }}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'tool' -%}@USER@{%- endif -%}"
    "<tool_result>{{ m['content'] }}</tool_result>"
    "{%- elif m['role'] == 'assistant' -%}"
    "@ASSISTANT@"
    "{%- if thinking and loop.index0 > ns.last_user and m['reasoning_content'] is defined and m['reasoning_content'] -%}"
    "@THINK@{{ m['reasoning_content'] }}@END_THINK@"
    "{%- else -%}@END_THINK@{%- endif -%}"
    "{{ m['content'] }}@EOS@"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}@ASSISTANT@{%- if thinking -%}@THINK@{%- else -%}@END_THINK@{%- endif -%}{%- endif -%}"
)


def chat_template(bos: str = BOS_TEXT, eos: str = EOS_TEXT) -> str:
    """The V4 chat template with the tokenizer's own BOS/EOS texts."""
    out = CHAT_TEMPLATE
    for marker, text in (("@BOS@", bos), ("@EOS@", eos), ("@USER@", USER_TEXT), ("@ASSISTANT@", ASSISTANT_TEXT),
                         ("@THINK@", THINK_TEXT), ("@END_THINK@", END_THINK_TEXT)):
        out = out.replace(marker, text.replace("'", "\\'"))
    return out


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool | None
    add_eos: bool | None
    chat_template: str
    chat_template_is_ours: bool
    hf_json: str
    named_templates: dict[str, str] = field(default_factory=dict)

    def keys(self, arch_name: str, noise_token_id: int | None = None) -> list[tuple[str, arch.V, Any]]:
        """The tokenizer keys of one file: dsv4 also stores tokenizer.json, dflash the mask id."""
        out: list[tuple[str, arch.V, Any]] = [
            (arch.KEY_TOK_MODEL, arch.V.STR, arch.TOKENIZER_MODEL),
            (arch.KEY_TOK_PRE, arch.V.STR, arch.TOKENIZER_PRE),
            (arch.KEY_TOK_TOKENS, arch.V.STR_ARRAY, self.tokens),
            (arch.KEY_TOK_TYPES, arch.V.I32_ARRAY, self.token_types),
        ]
        if self.merges:
            out.append((arch.KEY_TOK_MERGES, arch.V.STR_ARRAY, self.merges))
        for key, value in ((arch.KEY_TOK_BOS, self.bos_id), (arch.KEY_TOK_EOS, self.eos_id),
                           (arch.KEY_TOK_PAD, self.pad_id)):
            if value is not None:
                out.append((key, arch.V.U32, value))
        if arch_name == arch.ARCH_DFLASH and noise_token_id is not None:
            out.append((arch.KEY_TOK_MASK, arch.V.U32, noise_token_id))
        for key, flag in ((arch.KEY_TOK_ADD_BOS, self.add_bos), (arch.KEY_TOK_ADD_EOS, self.add_eos)):
            if flag is not None:
                out.append((key, arch.V.BOOL, flag))
        if arch_name == arch.ARCH_DSV4:
            out.append((arch.KEY_TOK_HF_JSON, arch.V.STR, self.hf_json))
        out.append((arch.KEY_CHAT_TEMPLATE, arch.V.STR, self.chat_template))
        for name, text in self.named_templates.items():
            out.append((f"{arch.KEY_CHAT_TEMPLATE}.{name}", arch.V.STR, text))
        return out


def _looks_special(text: str) -> bool:
    # As llama.cpp's converter: <|...|> and DeepSeek's full-width <｜...｜> are control tokens.
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>"))


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def load_vocab(ckpt: Checkpoint) -> Vocab:
    cfg = ckpt.config
    path = ckpt.dir / TOKENIZER_FILE
    text = ckpt.tokenizer_json_text()
    try:
        tok = json.loads(text)
        model = tok["model"]
        vocab: dict[str, int] = dict(model["vocab"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConversionError(f"{path}: not a tokenizers JSON file with a BPE model ({exc})") from exc
    if model.get("type", "BPE") != "BPE":
        raise ConversionError(f"{path}: tokenizer model {model.get('type')!r} is not BPE")
    added: dict[int, dict[str, Any]] = {}
    for entry in tok.get("added_tokens") or []:
        added[int(entry["id"])] = entry
        vocab[entry["content"]] = int(entry["id"])
    id_to_text: dict[int, str] = {}
    for text_, idx in vocab.items():
        if not 0 <= idx < cfg.vocab:
            raise ConversionError(f"{path}: token {text_!r} has id {idx}, outside vocab_size {cfg.vocab}")
        id_to_text[idx] = text_
    tokens, types = [], []
    for i in range(cfg.vocab):
        t = id_to_text.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
        elif i in added:
            tokens.append(t)
            types.append(TOKEN_CONTROL if added[i].get("special") or _looks_special(t) else TOKEN_USER_DEFINED)
        else:
            tokens.append(t)
            types.append(TOKEN_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    tcfg = ckpt.tokenizer_config()
    ids: dict[str, int | None] = {}
    for kind in ("bos", "eos", "pad"):
        text_ = _token_text(tcfg.get(f"{kind}_token"))
        idx = vocab.get(text_) if text_ is not None else None
        if idx is None:  # as gguf-py's SpecialVocab: fall back to config.json's *_token_id
            v = ckpt.raw_config.get(f"{kind}_token_id")
            idx = v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < cfg.vocab else None
        ids[kind] = idx
    add_bos = tcfg.get("add_bos_token") if isinstance(tcfg.get("add_bos_token"), bool) else None
    add_eos = tcfg.get("add_eos_token") if isinstance(tcfg.get("add_eos_token"), bool) else None

    template = tcfg.get("chat_template")
    named: dict[str, str] = {}
    if isinstance(template, list):  # HF's named templates: [{"name": ..., "template": ...}]
        for entry in template:
            if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                named[str(entry.get("name", "default"))] = entry["template"]
        template = named.pop("default", None)
    ours = not isinstance(template, str) or not template
    if ours:
        bos_text = id_to_text.get(ids["bos"], BOS_TEXT) if ids["bos"] is not None else BOS_TEXT
        eos_text = id_to_text.get(ids["eos"], EOS_TEXT) if ids["eos"] is not None else EOS_TEXT
        template = chat_template(bos_text, eos_text)
    return Vocab(tokens, types, merges, ids["bos"], ids["eos"], ids["pad"], add_bos, add_eos,
                 template, ours, text, named)
