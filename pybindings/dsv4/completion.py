"""Text completion and chat on dsv4.Model, shaped like llama-cpp-python's `Llama` / the OpenAI API.

`CompletionMixin` is a base class of `dsv4.Model`; it adds

    model.tokenize(text, add_bos=True, special=False) / model.detokenize(ids, special=False)
    model(prompt, ...) == model.create_completion(prompt, max_tokens=16, ...)
    model.create_chat_completion(messages, reasoning="none" | "high" | "max", ...)

and builds on `Model.generate(..., on_token=)`, the native generation loop that calls back with each
token as it is decided (compute without the GIL). Every result carries a `dsv4` section with the
speculative statistics (τ, rounds, drafted / accepted tokens, acceptance by draft position, draft
and verify time, tokens/s).

Text is produced token by token: an incremental UTF-8 decoder (never a broken character), then a
stop-string scanner that holds back any tail that could still become a stop string, so a stop
string split across tokens (or across stream chunks) is found and never shown. A non-streaming call
runs exactly the same pipeline and joins the pieces, so `stream=True` and `stream=False` give the
same text. Streaming runs the generation in a worker thread that hands text to the caller's thread
through a queue; leaving the iterator early (break, Ctrl-C) stops the generation at the next token.

One Model has one inference context: calls on the same Model from several threads are serialised
by a per-model lock; separate Model objects (of the same file or others) run concurrently.
"""
from __future__ import annotations

import queue
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, Union

from dsv4.chat import THINK_END, TOOL_CALLS_START, encode_messages, parse_reply, parse_tool_calls, reasoning_mode
from dsv4.errors import ContextOverflowError, MissingComponentError

if TYPE_CHECKING:
    from dsv4.tokenizer import Tokenizer

StopArg = Union[str, Sequence[str], None]


def held_suffix(text: str, needles: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `needles` (text that
    may still turn into a needle once more text arrives, so it must not be shown yet)."""
    best = 0
    for needle in needles:
        for k in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:k]):
                best = k
                break
    return best


class StopScanner:
    """Finds the first stop string in text that arrives in pieces, across piece borders."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self._pending = ""
        self.hit: str | None = None

    def feed(self, piece: str) -> str:
        """Text that is final now (before a stop string, or that cannot start one)."""
        if self.hit is not None:
            return ""
        text = self._pending + piece
        first = min(((i, s) for s in self.stop if (i := text.find(s)) >= 0), default=None)
        if first is not None:
            self.hit = first[1]
            self._pending = ""
            return text[:first[0]]
        keep = held_suffix(text, self.stop)
        self._pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def finish(self) -> str:
        """The held-back tail once no more text comes (it did not become a stop string)."""
        out, self._pending = ("" if self.hit is not None else self._pending), ""
        return out


def _stop_list(stop: StopArg) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    out = list(stop)
    bad = [s for s in out if not isinstance(s, str)]
    if bad:
        raise ValueError(f"stop must be a string or a list of strings, got {bad[0]!r}")
    return [s for s in out if s]


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    speculative: bool
    draft_max: int | None
    confidence_threshold: float | None
    stop: list[str]
    special: bool  # decode special tokens to text (chat: `</think>` must be visible)


@dataclass
class _Outcome:
    text: str
    tokens: list[int]
    finish_reason: str
    stats: dict[str, Any] = field(default_factory=dict)


class CompletionMixin:
    """Text API of dsv4.Model (see the module docstring). Needs from the class: generate(),
    metadata, n_ctx, n_vocab, has_draft, path."""

    # Provided by dsv4.Model.
    path: str
    n_ctx: int
    n_vocab: int
    metadata: dict[str, Any]
    has_draft: bool
    generate: Callable[..., tuple[list[int], dict[str, Any]]]

    # -- tokenizer -------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> "Tokenizer":
        """The tokenizer stored in the GGUF (built on first use; MissingComponentError if none)."""
        tok = self.__dict__.get("_dsv4_tokenizer")
        if tok is None:
            from dsv4.tokenizer import Tokenizer

            tok = Tokenizer.from_metadata(self.metadata, source_name=self.path)
            self.__dict__["_dsv4_tokenizer"] = tok
        return tok

    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of text. add_bos puts the BOS id first; special=True turns special-token text
        (e.g. "<｜User｜>") into those tokens, special=False keeps it ordinary text."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        """Text of token ids (special tokens left out unless special=True); ValueError names bad ids."""
        return self.tokenizer.decode(tokens, special=special)

    # -- completion ------------------------------------------------------------------------------
    def __call__(self, prompt: str | Sequence[int], **kwargs: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Same as create_completion(prompt, **kwargs)."""
        return self.create_completion(prompt, **kwargs)

    def create_completion(self, prompt: str | Sequence[int], max_tokens: int | None = 16, temperature: float = 1.0,
                          top_p: float = 1.0, top_k: int = 0, stop: str | Sequence[str] | None = None,
                          seed: int | None = None, stream: bool = False, speculative: bool = False,
                          draft_max: int | None = None, confidence_threshold: float | None = None,
                          ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Continue `prompt` (text, or token ids) by up to max_tokens tokens (None or <= 0: until the
        context is full); stops early at EOS or at a stop string (not included in the text).

        Returns an OpenAI-shaped text_completion dict (choices[0].text / finish_reason "stop" |
        "length", usage) with a `dsv4` section of speculative statistics; with stream=True an
        iterator of chunks, each carrying the text of newly accepted tokens, the last one the
        finish_reason, usage and `dsv4`. seed=None draws a fresh seed (reported in `dsv4`).
        Temperature 0 is greedy; speculative=True drafts with DSpark (same tokens at T = 0, same
        distribution at T > 0)."""
        if isinstance(prompt, str):
            # As llama-cpp-python: special-token text in a prompt is parsed; BOS first unless present.
            ids = self.tokenize(prompt, add_bos=False, special=True)
            bos = self.tokenizer.bos_id
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
        else:
            ids = self._token_list(prompt)
        req = self._request(ids, max_tokens, temperature, top_p, top_k, stop, seed, speculative, draft_max,
                            confidence_threshold, special=False)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.path}
        if stream:
            return self._completion_chunks(req, head)
        out = self._run(req, None, None)
        return {**head, "choices": [{"text": out.text, "index": 0, "logprobs": None,
                                     "finish_reason": out.finish_reason}], **self._tail(req, out)}

    def _completion_chunks(self, req: _Request, head: dict[str, Any]) -> Iterator[dict[str, Any]]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        outcome: _Outcome | None = None
        for item in self._stream(req):
            if isinstance(item, str):
                yield chunk(item, None)
            else:
                outcome = item
        assert outcome is not None
        yield {**chunk("", outcome.finish_reason), **self._tail(req, outcome)}

    # -- chat ------------------------------------------------------------------------------------
    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], reasoning: str = "none",
                               max_tokens: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
                               top_k: int = 0, stop: str | Sequence[str] | None = None, seed: int | None = None,
                               stream: bool = False, speculative: bool = False, draft_max: int | None = None,
                               confidence_threshold: float | None = None,
                               tools: Sequence[Mapping[str, Any]] | None = None, drop_thinking: bool = True,
                               ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Answer a conversation with DeepSeek-V4's chat encoding (dsv4.chat).

        reasoning: "none" (chat mode), "high" (thinking) or "max" (thinking with the maximum-effort
        preface). The reasoning block is returned apart from the answer, as
        choices[0].message.reasoning_content (None in chat mode) and .content; tool calls the model
        writes (tools given here, or on a system message) come back as message.tool_calls.
        max_tokens None: until EOS or a full context. stream=True yields chat.completion.chunk dicts
        whose delta holds "reasoning_content" or "content" pieces. Statistics as create_completion."""
        thinking_mode, effort = reasoning_mode(reasoning)
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        msgs = [dict(m) if isinstance(m, Mapping) else m for m in messages]
        if tools:
            # OpenAI passes tools with the request; V4 renders them from the system message.
            if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system":
                msgs[0] = {**msgs[0], "tools": list(tools)}
            else:
                msgs = [{"role": "system", "content": "", "tools": list(tools)}, *msgs]
        text = encode_messages(msgs, thinking_mode, drop_thinking=drop_thinking, add_bos=True,
                               reasoning_effort=effort)
        ids = self.tokenize(text, add_bos=False, special=True)
        req = self._request(ids, max_tokens, temperature, top_p, top_k, stop, seed, speculative, draft_max,
                            confidence_threshold, special=True)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.path}
        if stream:
            return self._chat_chunks(req, head, thinking_mode == "thinking")
        out = self._run(req, None, None)
        reply = parse_reply(out.text, thinking_mode)
        finish = "tool_calls" if reply.tool_calls and out.finish_reason == "stop" else out.finish_reason
        message = {"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning_content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                **self._tail(req, out)}

    def _chat_chunks(self, req: _Request, head: dict[str, Any], thinking: bool) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        split = ReplySplitter(thinking)
        outcome: _Outcome | None = None
        yield chunk({"role": "assistant"}, None)
        for item in self._stream(req):
            if isinstance(item, str):
                for key, piece in split.feed(item):
                    yield chunk({key: piece}, None)
            else:
                outcome = item
        assert outcome is not None
        for key, piece in split.finish():
            yield chunk({key: piece}, None)
        last: dict[str, Any] = {}
        finish = outcome.finish_reason
        if split.tool_calls:
            last["tool_calls"] = split.tool_calls
            finish = "tool_calls" if finish == "stop" else finish
        yield {**chunk(last, finish), **self._tail(req, outcome)}

    # -- the generation pipeline -----------------------------------------------------------------
    def _token_list(self, prompt: Sequence[int]) -> list[int]:
        if isinstance(prompt, (bytes, bytearray)):
            raise ValueError("prompt must be a str or a sequence of token ids, not bytes")
        try:
            ids = [int(t) for t in prompt]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"prompt must be a str or a sequence of token ids: {exc}") from exc
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"invalid token ids (vocabulary has {self.n_vocab}): "
                             + ", ".join(str(t) for t in bad[:8]))
        return ids

    def _request(self, ids: list[int], max_tokens: int | None, temperature: float, top_p: float, top_k: int,
                 stop: StopArg, seed: int | None, speculative: bool, draft_max: int | None,
                 confidence_threshold: float | None, *, special: bool) -> _Request:
        """Validate everything before any compute."""
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"the prompt has {len(ids)} tokens, more than the context of {self.n_ctx}; "
                                       f"shorten it or create the Model with a larger n_ctx")
        if speculative and not self.has_draft:
            raise MissingComponentError(f"{self.path}: speculative=True needs the DSpark draft, which this model "
                                        f"does not have (a file converted without it, or loaded with load_draft=False)")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if draft_max is not None and draft_max < 0:
            raise ValueError(f"draft_max must be >= 0, got {draft_max}")
        room = self.n_ctx  # the engine stops at a full context ("length"); this only bounds the request
        n = room if max_tokens is None or max_tokens <= 0 else min(int(max_tokens), room)
        return _Request(ids, n, float(temperature), float(top_p), int(top_k),
                        secrets.randbits(63) if seed is None else int(seed), bool(speculative), draft_max,
                        confidence_threshold, _stop_list(stop), special)

    def _lock(self) -> threading.Lock:
        # dict.setdefault is atomic under the GIL: exactly one lock per Model, made on first use.
        return self.__dict__.setdefault("_dsv4_lock", threading.Lock())

    def _run(self, req: _Request, on_text: Callable[[str], None] | None,
             cancel: threading.Event | None) -> _Outcome:
        """Generate, turning tokens into final text pieces as they are decided (on_text gets each)."""
        tok = self.tokenizer
        decoder = tok.incremental_decoder(special=req.special)
        scanner = StopScanner(req.stop)
        pieces: list[str] = []
        seen: list[int] = []

        def emit(text: str) -> None:
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)

        def on_token(token: int) -> bool:
            seen.append(token)
            if token != tok.eos_id:
                emit(scanner.feed(decoder.feed(token)))
                if scanner.hit is not None:
                    return False
            return cancel is None or not cancel.is_set()

        with self._lock():
            _, stats = self.generate(req.prompt_ids, req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                     top_k=req.top_k, seed=req.seed, speculative=req.speculative,
                                     draft_max=req.draft_max, confidence_threshold=req.confidence_threshold,
                                     ignore_eos=False, on_token=on_token)
        if scanner.hit is None:
            emit(scanner.feed(decoder.flush()))
            emit(scanner.finish())
        stopped = scanner.hit is not None or stats.get("stop_reason") == "eos"
        return _Outcome("".join(pieces), seen, "stop" if stopped else "length", dict(stats))

    def _stream(self, req: _Request) -> Iterator[str | _Outcome]:
        """Text pieces as the worker thread produces them, then the _Outcome."""
        q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        cancel = threading.Event()

        def work() -> None:
            try:
                q.put(("done", self._run(req, lambda text: q.put(("text", text)), cancel)))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                q.put(("error", exc))

        worker = threading.Thread(target=work, name="dsv4-generate", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = q.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    yield value
                    return
                else:
                    raise value
        finally:
            cancel.set()  # the consumer left early (break, close, Ctrl-C): stop at the next token
            worker.join()

    def _tail(self, req: _Request, out: _Outcome) -> dict[str, Any]:
        """usage + the dsv4 statistics section of a result (or of the last stream chunk)."""
        n = len(out.tokens)
        return {"usage": {"prompt_tokens": len(req.prompt_ids), "completion_tokens": n,
                          "total_tokens": len(req.prompt_ids) + n},
                "dsv4": speculative_stats(out.stats, n, req, self.metadata)}


def _block_size(metadata: Mapping[str, Any]) -> int:
    for key, value in metadata.items():
        if key.endswith(".dspark.block_size") and isinstance(value, int):
            return int(value)
    return 0


def speculative_stats(stats: Mapping[str, Any], n_tokens: int, req: _Request,
                      metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The `dsv4` section: settings and what the speculative loop did (times in seconds)."""
    rounds = int(stats.get("rounds", 0))
    gamma = 0
    if req.speculative:
        gamma = _block_size(metadata)
        if req.draft_max:
            gamma = min(gamma, req.draft_max) if gamma else req.draft_max
    accepted_at = [int(a) for a in stats.get("accepted_at", [])][:gamma]
    # Rounds that verified draft k (fewer than all rounds with adaptive length or near the end).
    verified_at = [int(v) for v in stats.get("verified_at", [rounds] * gamma)][:gamma]
    total, prefill = float(stats.get("total_s", 0.0)), float(stats.get("prefill_s", 0.0))
    decode_s = total - prefill
    return {
        "speculative": req.speculative,
        "draft_max": gamma,
        "confidence_threshold": req.confidence_threshold,
        "temperature": req.temperature,
        "seed": req.seed,
        "tau": float(stats.get("tau", 1.0)),
        "rounds": rounds,
        "drafted": int(stats.get("drafted", 0)),
        "accepted": int(stats.get("accepted", 0)),
        "accepted_at": accepted_at,
        "verified_at": verified_at,
        "acceptance_by_position": [a / v if v else 0.0 for a, v in zip(accepted_at, verified_at)],
        "prefill_s": prefill,
        "draft_s": float(stats.get("draft_s", 0.0)),
        "verify_s": float(stats.get("verify_s", 0.0)),
        "total_s": total,
        "tokens_per_s": n_tokens / decode_s if decode_s > 0 else 0.0,
        "prompt_tokens_per_s": len(req.prompt_ids) / prefill if prefill > 0 else 0.0,
        "stop_reason": stats.get("stop_reason"),
    }


class ReplySplitter:
    """Streams a generated assistant turn into ("reasoning_content" | "content", piece) deltas.

    In thinking mode text is reasoning until `</think>`, then content; content ends where a DSML
    tool-call block starts (collected and parsed at the end into `tool_calls`). A tail that could
    be the start of either marker is held back, so markers split across pieces are still found and
    the pieces join to what parse_reply() gives for the whole text."""

    def __init__(self, thinking: bool) -> None:
        self._field = "reasoning_content" if thinking else "content"
        self._buf = ""
        self._calls = ""
        self.tool_calls: list[dict[str, Any]] = []

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self._field == "tool_calls":
            self._calls += text
            return out
        self._buf += text
        while True:
            marker = THINK_END if self._field == "reasoning_content" else TOOL_CALLS_START
            i = self._buf.find(marker)
            if i < 0:
                keep = held_suffix(self._buf, [marker])
                ready, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                if ready:
                    out.append((self._field, ready))
                return out
            if i:
                out.append((self._field, self._buf[:i]))
            rest = self._buf[i + len(marker):]
            self._buf = ""
            if self._field == "reasoning_content":
                self._field = "content"
                self._buf = rest
            else:
                self._field = "tool_calls"
                self._calls = rest
                return out

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self._field == "tool_calls":
            self.tool_calls = parse_tool_calls(self._calls)
        elif self._buf:
            out.append((self._field, self._buf))
        self._buf = ""
        return out


__all__ = ["CompletionMixin", "ReplySplitter", "StopScanner", "held_suffix", "speculative_stats"]
