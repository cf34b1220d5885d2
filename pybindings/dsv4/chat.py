"""DeepSeek-V4's chat encoding: messages -> prompt text, and generated text -> an assistant message.

V4 ships no Jinja template; its model repository documents the format with a Python encoder
(`encoding/encoding_dsv4.py` + README, v4-model.md §12.2). This module implements that format:

    BOS [effort preface] system [tools block] <｜User｜>user <｜Assistant｜></think>answer<｜end▁of▁sentence｜> ...

* Chat mode (reasoning "none") closes the think block right after `<｜Assistant｜>`; thinking mode
  opens it (`<think>`) and the model writes `reasoning</think>answer<eos>`.
* Reasoning of assistant turns before the last user turn is dropped (those turns then look like
  chat turns), unless `drop_thinking=False` or any message carries `tools`.
* `reasoning_effort="max"` puts a fixed paragraph before everything else (thinking mode only).
* Tools (OpenAI format, on a system or developer message) add a "## Tools" block; assistant tool
  calls are DSML blocks; `tool` messages become `<tool_result>` blocks of the next user turn,
  ordered like the calls they answer.
* Roles: system, user, assistant, tool, developer (a user turn), latest_reminder; a user message may
  carry `task` (quick-instruction tokens) and an assistant message `wo_eos` (no end token).

`tests/data/v4_encoding/` holds the four official input/output pairs; tests check equality.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
THINK_START, THINK_END = "<think>", "</think>"
DSML = "｜DSML｜"
TASK_TOKENS = {name: f"<｜{name}｜>" for name in ("action", "query", "authority", "domain", "title", "read_url")}

ThinkingMode = Literal["chat", "thinking"]
Reasoning = Literal["none", "high", "max"]

REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause,"
    " rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered"
    " alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)

_TOOLS_BLOCK = """## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<{D}tool_calls>" block like the following:

<{D}tool_calls>
<{D}invoke name="$TOOL_NAME">
<{D}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{D}parameter>
...
</{D}invoke>
<{D}invoke name="$TOOL_NAME2">
...
</{D}invoke>
</{D}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {TS}), you MUST output your complete reasoning inside {TS}...{TE} BEFORE any tool calls or final response.

Otherwise, output directly after {TE} with tool calls or final response.

### Available Tool Schemas

{SCHEMAS}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""

_RESPONSE_FORMAT = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n{schema}"

# Where a generated answer's tool calls start (after the content) and how they end.
TOOL_CALLS_START = f"\n\n<{DSML}tool_calls>"
_TOOL_CALLS_END = f"</{DSML}tool_calls>"
_ROLES = ("system", "user", "assistant", "tool", "developer", "latest_reminder")


def _json(value: Any) -> str:
    # The format's JSON: Python's default separators, non-ASCII kept as is.
    return json.dumps(value, ensure_ascii=False)


def reasoning_mode(reasoning: str) -> tuple[ThinkingMode, str | None]:
    """reasoning "none" | "high" | "max" -> (thinking_mode, reasoning_effort)."""
    if reasoning == "none":
        return "chat", None
    if reasoning in ("high", "max"):
        return "thinking", reasoning
    raise ValueError(f"reasoning must be 'none', 'high' or 'max', got {reasoning!r}")


# -- encoding ------------------------------------------------------------------------------------
def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] is a {type(m).__name__}, not a dict")
        role = m.get("role")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}]: unknown role {role!r} (expected one of {', '.join(_ROLES)})")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"messages[{i}] ({role}): content must be a string, got {type(content).__name__}")
        if role == "developer" and not content:
            raise ValueError(f"messages[{i}]: a developer message needs content")
        task = m.get("task")
        if task is not None and task not in TASK_TOKENS:
            raise ValueError(f"messages[{i}]: unknown task {task!r} (expected one of {', '.join(TASK_TOKENS)})")


def _merge_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """V4 has no tool role: tool results (and the user text right after them) form one user turn.

    Every user message becomes a list of blocks; a tool result or a user message joins the previous
    user turn when that turn has blocks (a user turn with a `task` takes no further user text)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        m = dict(m)
        role = m.get("role")
        prev = out[-1] if out and out[-1].get("role") == "user" and "blocks" in out[-1] else None
        if role == "tool":
            block = {"type": "tool_result", "id": m.get("tool_call_id", ""), "content": m.get("content", "")}
            if prev is not None:
                prev["blocks"].append(block)
            else:
                out.append({"role": "user", "blocks": [block]})
        elif role == "user":
            block = {"type": "text", "text": m.get("content", "")}
            if prev is not None and prev.get("task") is None:
                prev["blocks"].append(block)
            else:
                turn = {"role": "user", "content": m.get("content", ""), "blocks": [block]}
                for key in ("task", "wo_eos"):
                    if key in m:
                        turn[key] = m[key]
                out.append(turn)
        else:
            out.append(m)
    return out


def _order_tool_results(messages: list[dict[str, Any]]) -> None:
    """Sort each user turn's tool results by the order of the last assistant turn's tool calls."""
    order: dict[str, int] = {}
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            order = {}
            for i, call in enumerate(m["tool_calls"]):
                call_id = call.get("id") or call.get("function", {}).get("id", "")
                if call_id:
                    order[call_id] = i
        elif m.get("role") == "user" and m.get("blocks"):
            results = [b for b in m["blocks"] if b["type"] == "tool_result"]
            if len(results) > 1 and order:
                ranked = iter(sorted(results, key=lambda b: order.get(b["id"], 0)))
                m["blocks"] = [next(ranked) if b["type"] == "tool_result" else b for b in m["blocks"]]


def _last_user(messages: Sequence[Mapping[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") in ("user", "developer"):
            return i
    return -1


def _drop_earlier_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Before the last user turn: assistant turns lose their reasoning, developer turns go."""
    last = _last_user(messages)
    out = []
    for i, m in enumerate(messages):
        if i >= last or m["role"] in ("user", "system", "tool", "latest_reminder"):
            out.append(m)
        elif m["role"] == "assistant":
            out.append({k: v for k, v in m.items() if k != "reasoning_content"})
    return out


def _tools_block(tools: Sequence[Mapping[str, Any]]) -> str:
    schemas = "\n".join(_json(t["function"] if "function" in t else t) for t in tools)
    return (_TOOLS_BLOCK.replace("{D}", DSML).replace("{TS}", THINK_START).replace("{TE}", THINK_END)
            .replace("{SCHEMAS}", schemas))


def _dsml_call(call: Mapping[str, Any]) -> str:
    fn = call.get("function", call)
    raw = fn.get("arguments", "{}")
    try:
        args = json.loads(raw) if isinstance(raw, str) else dict(raw)
        if not isinstance(args, dict):
            raise TypeError
    except (ValueError, TypeError):
        args = {"arguments": raw}
    params = "\n".join(
        f'<{DSML}parameter name="{k}" string="{"true" if isinstance(v, str) else "false"}">'
        f'{v if isinstance(v, str) else _json(v)}</{DSML}parameter>' for k, v in args.items())
    return f'<{DSML}invoke name="{fn.get("name")}">\n{params}\n</{DSML}invoke>'


def _system_extras(m: Mapping[str, Any]) -> str:
    text = ""
    if m.get("tools"):
        text += "\n\n" + _tools_block(m["tools"])
    if m.get("response_format"):
        text += "\n\n" + _RESPONSE_FORMAT.format(schema=_json(m["response_format"]))
    return text


def _render(i: int, messages: list[dict[str, Any]], thinking: bool, drop: bool, effort: str | None) -> str:
    m = messages[i]
    role = m["role"]
    last_user = _last_user(messages)
    out = REASONING_EFFORT_MAX if i == 0 and thinking and effort == "max" else ""
    if role == "system":
        out += (m.get("content") or "") + _system_extras(m)
    elif role == "developer":
        out += USER + m["content"] + _system_extras(m)
    elif role == "user":
        out += USER
        blocks = m.get("blocks")
        if blocks:
            out += "\n\n".join(b["text"] if b["type"] == "text" else f"<tool_result>{b['content']}</tool_result>"
                               for b in blocks)
        else:
            out += m.get("content") or ""
    elif role == "latest_reminder":
        out += LATEST_REMINDER + (m.get("content") or "")
    else:  # assistant
        after_task = i > 0 and messages[i - 1].get("task") is not None
        reasoning = ""
        if thinking and not after_task and (not drop or i > last_user):
            reasoning = (m.get("reasoning_content") or "") + THINK_END
        calls = ""
        if m.get("tool_calls"):
            calls = TOOL_CALLS_START + "\n" + "\n".join(_dsml_call(c) for c in m["tool_calls"]) + "\n" + _TOOL_CALLS_END
        out += reasoning + (m.get("content") or "") + calls + ("" if m.get("wo_eos") else EOS)

    # What opens the next assistant turn; only written before an assistant turn or at the end.
    if i + 1 < len(messages) and messages[i + 1]["role"] not in ("assistant", "latest_reminder"):
        return out
    task = m.get("task")
    if task is not None:
        if task == "action":
            out += ASSISTANT + (THINK_START if thinking else THINK_END)
        out += TASK_TOKENS[task]
    elif role in ("user", "developer"):
        open_think = thinking and (not drop or i >= last_user)
        out += ASSISTANT + (THINK_START if open_think else THINK_END)
    return out


def encode_messages(messages: Sequence[Mapping[str, Any]], thinking_mode: ThinkingMode = "chat", *,
                    drop_thinking: bool = True, add_bos: bool = True, reasoning_effort: str | None = None) -> str:
    """The V4 prompt text for `messages` (ends with the opening of the assistant's answer when the
    last message is a user turn). Raises ValueError on a malformed message."""
    if thinking_mode not in ("chat", "thinking"):
        raise ValueError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}")
    if reasoning_effort not in (None, "high", "max"):
        raise ValueError(f"reasoning_effort must be None, 'high' or 'max', got {reasoning_effort!r}")
    _check_messages(messages)
    merged = _merge_tool_results(messages)
    _order_tool_results(merged)
    thinking = thinking_mode == "thinking"
    drop = drop_thinking and not any(m.get("tools") for m in merged)
    if thinking and drop:
        merged = _drop_earlier_reasoning(merged)
    return (BOS if add_bos else "") + "".join(
        _render(i, merged, thinking, drop, reasoning_effort) for i in range(len(merged)))


# -- decoding ------------------------------------------------------------------------------------
@dataclass
class ParsedReply:
    """A generated assistant turn split into its parts (reasoning_content is None in chat mode)."""

    content: str
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning_finished: bool = True   # False: the text ended inside the think block

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning_content is not None:
            msg["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


_INVOKE_RE = re.compile(rf'<{DSML}invoke name="(.*?)">\n(.*?)</{DSML}invoke>', re.S)
_PARAM_RE = re.compile(rf'<{DSML}parameter name="(.*?)" string="(true|false)">(.*?)</{DSML}parameter>', re.S)


def parse_tool_calls(block: str) -> list[dict[str, Any]]:
    """DSML invoke blocks -> OpenAI tool calls (arguments as a JSON string, as the API returns them)."""
    calls = []
    for i, (name, body) in enumerate(_INVOKE_RE.findall(block)):
        parts = [f"{_json(k)}: {_json(v) if is_str == 'true' else v}" for k, is_str, v in _PARAM_RE.findall(body)]
        calls.append({"id": f"call_{i}", "type": "function",
                      "function": {"name": name, "arguments": "{" + ", ".join(parts) + "}"}})
    return calls


def parse_reply(text: str, thinking_mode: ThinkingMode = "chat") -> ParsedReply:
    """Split the generated text of one assistant turn (without the end token) into reasoning,
    content and tool calls. Lenient: text cut off inside the think block is all reasoning."""
    reasoning: str | None = None
    finished = True
    if thinking_mode == "thinking":
        end = text.find(THINK_END)
        if end < 0:
            return ParsedReply("", text, [], reasoning_finished=False)
        reasoning, text = text[:end], text[end + len(THINK_END):]
    start = text.find(TOOL_CALLS_START)
    calls: list[dict[str, Any]] = []
    if start >= 0:
        text, block = text[:start], text[start + len(TOOL_CALLS_START):]
        calls = parse_tool_calls(block)
    return ParsedReply(text, reasoning, calls, finished)


__all__ = ["ParsedReply", "encode_messages", "parse_reply", "parse_tool_calls", "reasoning_mode"]
