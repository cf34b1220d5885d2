"""DeepSeek-V4 chat encoding (dsv4.chat) against the official encoder's examples, the reply parser
and streaming splitter, and Model.create_chat_completion on the fixture."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import dsv4
from dsv4.chat import REASONING_EFFORT_MAX, encode_messages, parse_reply
from dsv4.completion import ReplySplitter

DATA = Path(__file__).parent / "data" / "v4_encoding"
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def _official_input(i: int) -> list[dict]:
    data = json.loads((DATA / f"test_input_{i}.json").read_text(encoding="utf-8"))
    if isinstance(data, dict):  # pair 1: the official test attaches the tools to the first message
        data["messages"][0]["tools"] = data["tools"]
        return data["messages"]
    return data


@pytest.mark.parametrize("i,mode", [(1, "thinking"), (2, "thinking"), (3, "thinking"), (4, "chat")])
def test_official_example_pairs(i: int, mode: str) -> None:
    gold = (DATA / f"test_output_{i}.txt").read_text(encoding="utf-8")
    assert encode_messages(_official_input(i), mode) == gold


def test_official_replies_parse() -> None:
    """As the official test: the assistant turns of pairs 1 and 2 parse back into their parts."""
    marker = "<｜Assistant｜><think>"
    gold = (DATA / "test_output_1.txt").read_text(encoding="utf-8")
    start = gold.find(marker) + len(marker)
    first = parse_reply(gold[start:gold.find("<｜User｜>", start)].removesuffix(EOS), "thinking")
    assert first.reasoning_content == "The user wants to know the weather in Beijing. I should use the get_weather tool."
    assert first.content == ""
    assert [c["function"]["name"] for c in first.tool_calls] == ["get_weather"]
    assert json.loads(first.tool_calls[0]["function"]["arguments"]) == {"location": "Beijing", "unit": "celsius"}
    last = parse_reply(gold[gold.rfind(marker) + len(marker):].removesuffix(EOS), "thinking")
    assert last.reasoning_content == "Got the weather data. Let me format a nice response."
    assert "22°C" in last.content and last.tool_calls == []
    gold2 = (DATA / "test_output_2.txt").read_text(encoding="utf-8")
    reply = parse_reply(gold2[gold2.rfind(marker) + len(marker):].removesuffix(EOS), "thinking")
    assert (reply.reasoning_content, reply.content) == ("The user asks about the capital of France. It is Paris.",
                                                        "The capital of France is Paris.")
    assert "The user said hello" not in gold2  # earlier reasoning is dropped


SYS = {"role": "system", "content": "You are a helpful assistant."}
THREE = [SYS, {"role": "user", "content": "One"},
         {"role": "assistant", "content": "First answer.", "reasoning_content": "First reasoning."},
         {"role": "user", "content": "Two"},
         {"role": "assistant", "content": "Second answer.", "reasoning_content": "Second reasoning."},
         {"role": "user", "content": "Three"}]
H = f"{BOS}You are a helpful assistant."

# Outputs of the official encoder (encoding_dsv4.py, deepseek-ai/DeepSeek-V4-Flash @ 60d8d707) on
# these conversations, as transcribed in the MIT-licensed test file
# osaurus-ai DeepseekV4ChatEncoderTests.swift (found via the code search; data, not code).
EXAMPLES = [
    ([SYS, {"role": "user", "content": "Hello"}], "chat", {}, f"{H}<｜User｜>Hello<｜Assistant｜></think>"),
    ([SYS, {"role": "user", "content": "Hello"}], "thinking", {}, f"{H}<｜User｜>Hello<｜Assistant｜><think>"),
    ([SYS, {"role": "user", "content": "Hello"}], "thinking", {"reasoning_effort": "max"},
     f"{BOS}{REASONING_EFFORT_MAX}You are a helpful assistant.<｜User｜>Hello<｜Assistant｜><think>"),
    ([SYS, {"role": "user", "content": "Hello"}], "thinking", {"reasoning_effort": "high"},
     f"{H}<｜User｜>Hello<｜Assistant｜><think>"),
    ([SYS, {"role": "user", "content": "Hello"}], "chat", {"reasoning_effort": "max"},
     f"{H}<｜User｜>Hello<｜Assistant｜></think>"),
    (THREE, "thinking", {}, f"{H}<｜User｜>One<｜Assistant｜></think>First answer.{EOS}<｜User｜>Two<｜Assistant｜>"
                            f"</think>Second answer.{EOS}<｜User｜>Three<｜Assistant｜><think>"),
    (THREE, "thinking", {"drop_thinking": False},
     f"{H}<｜User｜>One<｜Assistant｜><think>First reasoning.</think>First answer.{EOS}<｜User｜>Two<｜Assistant｜>"
     f"<think>Second reasoning.</think>Second answer.{EOS}<｜User｜>Three<｜Assistant｜><think>"),
    (THREE, "chat", {}, f"{H}<｜User｜>One<｜Assistant｜></think>First answer.{EOS}<｜User｜>Two<｜Assistant｜>"
                        f"</think>Second answer.{EOS}<｜User｜>Three<｜Assistant｜></think>"),
    ([SYS, {"role": "developer", "content": "Answer in one word."}], "thinking", {},
     f"{H}<｜User｜>Answer in one word.<｜Assistant｜><think>"),
    ([SYS, {"role": "developer", "content": "Answer in one word."},
      {"role": "assistant", "content": "Yes.", "reasoning_content": "Earlier reasoning."},
      {"role": "user", "content": "Again?"}], "thinking", {},
     f"{H}Yes.{EOS}<｜User｜>Again?<｜Assistant｜><think>"),
    ([SYS, {"role": "latest_reminder", "content": "2026-08-11, London"}, {"role": "user", "content": "Hello"}],
     "thinking", {}, f"{H}<｜latest_reminder｜>2026-08-11, London<｜User｜>Hello<｜Assistant｜><think>"),
    ([SYS, {"role": "user", "content": "Weather?", "task": "action"}], "chat", {},
     f"{H}<｜User｜>Weather?<｜Assistant｜></think><｜action｜>"),
    ([SYS, {"role": "user", "content": "Weather?", "task": "query"}], "chat", {}, f"{H}<｜User｜>Weather?<｜query｜>"),
    ([SYS, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi", "wo_eos": True}], "chat",
     {"add_bos": False}, "You are a helpful assistant.<｜User｜>Hello<｜Assistant｜></think>Hi"),
    ([SYS, {"role": "user", "content": "One"}, {"role": "user", "content": "Two"}], "chat", {},
     f"{H}<｜User｜>One\n\nTwo<｜Assistant｜></think>"),
]


@pytest.mark.parametrize("messages,mode,kwargs,expected", EXAMPLES)
def test_encoder_examples(messages, mode, kwargs, expected) -> None:
    assert encode_messages(messages, mode, **kwargs) == expected


def test_tool_results_follow_call_order() -> None:
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": json.dumps({"n": i})}}
             for i, n in enumerate(["a", "b"])]
    msgs = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "B"}, {"role": "tool", "tool_call_id": "c0", "content": "A"}]
    out = encode_messages(msgs, "chat")
    assert out.endswith("<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result><｜Assistant｜></think>")
    assert '<｜DSML｜parameter name="n" string="false">1</｜DSML｜parameter>' in out


def test_bad_messages() -> None:
    with pytest.raises(ValueError, match="unknown role 'robot'"):
        encode_messages([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        encode_messages("hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="content must be a string"):
        encode_messages([{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match="unknown task"):
        encode_messages([{"role": "user", "content": "x", "task": "fly"}])
    with pytest.raises(ValueError, match="thinking_mode"):
        encode_messages([{"role": "user", "content": "x"}], "deep")  # type: ignore[arg-type]


def test_splitter_matches_parser_at_every_split() -> None:
    call = ('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="x" string="false">2'
            '</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>')
    cases = [("think <b>a</b></thin k</think>answer </thinkx", "thinking"),
             ("only reasoning, cut off </thi", "thinking"), ("plain answer </think> stays", "chat"),
             ("r</think>calling" + call, "thinking")]
    for text, mode in cases:
        want = parse_reply(text, mode)
        for cut in range(len(text) + 1):
            for step in (1, 3):
                pieces = [text[:cut]] + [text[i:i + step] for i in range(cut, len(text), step)]
                split = ReplySplitter(mode == "thinking")
                got: dict[str, str] = {"reasoning_content": "", "content": ""}
                for p in pieces:
                    for key, piece in split.feed(p):
                        got[key] += piece
                for key, piece in split.finish():
                    got[key] += piece
                assert got["content"] == want.content
                assert got["reasoning_content"] == (want.reasoning_content or "")
                assert split.tool_calls == want.tool_calls
    assert parse_reply("r</think>calling" + call, "thinking").tool_calls[0]["function"] == {
        "name": "f", "arguments": '{"x": 2}'}


# -- create_chat_completion on the fixture ------------------------------------------------------
@pytest.fixture(scope="module")
def model(converted):
    with dsv4.Model(converted(), n_ctx=1024) as m:  # the tools block and the max preface are long
        yield m


def _joined(chunks) -> tuple[dict[str, str], dict]:
    got = {"reasoning_content": "", "content": ""}
    last = {}
    for c in chunks:
        for key in got:
            got[key] += c["choices"][0]["delta"].get(key) or ""
        last = c
    return got, last


@pytest.mark.parametrize("reasoning", ["none", "high", "max"])
def test_chat_completion_stream_equals_plain(model, reasoning) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a token?"}]
    kw = dict(reasoning=reasoning, max_tokens=24, temperature=0.8, seed=5)
    res = model.create_chat_completion(msgs, **kw)
    mode, effort = ("chat", None) if reasoning == "none" else ("thinking", reasoning)
    prompt = model.tokenize(encode_messages(msgs, mode, reasoning_effort=effort), add_bos=False, special=True)
    assert res["usage"]["prompt_tokens"] == len(prompt) and res["object"] == "chat.completion"
    msg = res["choices"][0]["message"]
    got, last = _joined(model.create_chat_completion(msgs, stream=True, **kw))
    assert got["content"] == msg["content"]
    assert got["reasoning_content"] == (msg["reasoning_content"] or "")
    assert (msg["reasoning_content"] is None) == (reasoning == "none")
    assert last["choices"][0]["finish_reason"] == res["choices"][0]["finish_reason"]
    assert last["usage"] == res["usage"] and last["dsv4"]["seed"] == 5


def _scripted(model, monkeypatch, text: str) -> None:
    """Model.generate replaced by one that 'generates' the tokens of text, then EOS."""
    ids = model.tokenize(text, add_bos=False, special=True) + [model.tokenizer.eos_id]

    def fake_generate(prompt_ids, max_tokens, *, on_token=None, **kwargs):
        out = []
        for t in ids[:max_tokens]:
            out.append(t)
            if on_token is not None and on_token(t) is False:
                return out, {"stop_reason": "interrupted", "rounds": len(out)}
        return out, {"stop_reason": "eos" if len(out) == len(ids) else "max_tokens", "rounds": len(out)}

    monkeypatch.setattr(model, "generate", fake_generate)


def test_reasoning_and_tool_calls_come_back_apart(model, monkeypatch) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    _scripted(model, monkeypatch, "Let me think</think>The answer.")
    for stream in (False, True):
        res = model.create_chat_completion(msgs, reasoning="high", stream=stream)
        if stream:
            got, last = _joined(res)
            msg, finish = got, last["choices"][0]["finish_reason"]
        else:
            msg, finish = res["choices"][0]["message"], res["choices"][0]["finish_reason"]
        assert (msg["reasoning_content"], msg["content"], finish) == ("Let me think", "The answer.", "stop")
    _scripted(model, monkeypatch, 'ok</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n'
              '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
              '</｜DSML｜tool_calls>')
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    res = model.create_chat_completion(msgs, reasoning="high", tools=tools)
    choice = res["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == ""
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    last = list(model.create_chat_completion(msgs, reasoning="high", tools=tools, stream=True))[-1]
    assert last["choices"][0]["delta"]["tool_calls"] == choice["message"]["tool_calls"]


def test_chat_errors(model) -> None:
    with pytest.raises(ValueError, match="reasoning must be"):
        model.create_chat_completion([{"role": "user", "content": "x"}], reasoning="low")
    with pytest.raises(ValueError, match="unknown role"):
        model.create_chat_completion([{"role": "bot", "content": "x"}])
    with pytest.raises(dsv4.ContextOverflowError):
        model.create_chat_completion([{"role": "user", "content": "token " * 1100}])
