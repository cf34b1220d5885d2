"""dsv4.Model: a DeepSeek-V4 GGUF loaded by the native engine.

This module holds the low-level surface (logits for a token sequence, metadata); text completion,
chat and speculative decoding build on it.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from dsv4.completion import CompletionMixin
from dsv4.errors import ContextOverflowError, Dsv4Error


def _native():
    from dsv4 import _native

    return _native


class Model(CompletionMixin):
    """A model file (dsv4 or llama.cpp deepseek4 GGUF) with one inference context.

    >>> model = dsv4.Model("model.gguf", n_ctx=4096)
    >>> model.logits([0, 17, 42]).shape
    (3, model.n_vocab)
    """

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 64, load_draft: bool = True, exact: bool = False,
                 draft: str | os.PathLike[str] | None = None, repack: bool = True) -> None:
        """draft: a llama.cpp `dflash` sidecar (the mtp-*.gguf that `dsv4 convert --llama-cpp` writes)
        to take the DSpark draft from, e.g. for a `deepseek4` target; it replaces a draft in the file.
        repack: copy the weights this CPU has packed-layout kernels for (MXFP4 experts with AVX-512
        VNNI or AVX2, FP8 matrices with AVX512_BF16) once into those layouts: the same bytes rearranged,
        costing memory for that copy. exact=True never reads them, so it is skipped there."""
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no such model file: {self.path}")
        self.draft_path = os.fspath(draft) if draft is not None else None
        if self.draft_path is not None and not os.path.exists(self.draft_path):
            raise FileNotFoundError(f"no such draft file: {self.draft_path}")
        if self.draft_path is not None and not load_draft:
            raise ValueError("draft= was given with load_draft=False")
        native = _native()
        self._model = native.Model(self.path, load_draft, self.draft_path, repack and not exact)
        # exact=True runs every matmul with f32 activations (default: bf16-rounded for FP8/BF16
        # weights, 8-bit blocks for Q8_0/MXFP4).
        self._ctx = native.Context(self._model, n_ctx=n_ctx, n_threads=n_threads or 0, n_batch=n_batch,
                                   float_activations=exact)
        self.n_ctx = n_ctx
        self._metadata: dict[str, Any] | None = None

    # -- properties ------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return int(self._model.n_vocab)

    @property
    def n_ctx_train(self) -> int:
        return int(self._model.n_ctx_train)

    @property
    def n_embd(self) -> int:
        return int(self._model.n_embd)

    @property
    def has_draft(self) -> bool:
        return bool(self._model.has_draft)

    @property
    def packed_bytes(self) -> int:
        """Bytes of weights copied into packed kernel layouts at load (0: computing from the file's
        mapping only, e.g. with repack=False, exact=True, or a CPU without those kernels)."""
        return int(self._model.packed_bytes)

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF key/value metadata, as read by the engine's own reader."""
        if self._metadata is None:
            self._metadata = dict(_native().gguf_read(self.path)["metadata"])
        return self._metadata

    def memory(self) -> dict[str, int]:
        """Bytes of weights, caches (and per token), and scratch of this model's context."""
        return dict(self._ctx.memory())

    # -- compute ---------------------------------------------------------------------------------
    def _check_tokens(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        tokens = np.asarray(token_ids)
        if tokens.ndim != 1:
            raise ValueError(f"token_ids must be a flat sequence, got shape {tokens.shape}")
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"token_ids must be integers, got {tokens.dtype}")
        bad = tokens[(tokens < 0) | (tokens >= self.n_vocab)]
        if bad.size:
            shown = ", ".join(str(int(t)) for t in bad[:8])
            raise ValueError(f"invalid token ids (vocabulary has {self.n_vocab}): {shown}")
        return tokens.astype(np.int32)

    def logits(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits [len(token_ids), n_vocab] (float32) for a fresh sequence of token ids."""
        tokens = self._check_tokens(token_ids)
        if tokens.size == 0:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        if tokens.size > self.n_ctx:
            raise ContextOverflowError(f"{tokens.size} tokens do not fit in the context of {self.n_ctx}; "
                                       f"create the Model with a larger n_ctx")
        self._ctx.truncate(0)
        rows = np.arange(tokens.size, dtype=np.int32)
        logits, _ = self._ctx.decode(tokens, 0, rows, False)
        return logits

    def generate(self, prompt_ids: Sequence[int] | np.ndarray, max_tokens: int = 256, *, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int = 0, speculative: bool = True,
                 draft_max: int | None = None, confidence_threshold: float | None = None, ignore_eos: bool = False,
                 on_token: Callable[[int], bool | None] | None = None) -> tuple[list[int], dict[str, Any]]:
        """Generate up to max_tokens token ids after prompt_ids (stops at EOS unless ignore_eos).

        speculative=True drafts with the DSpark head and verifies each block in one target pass (same
        tokens as plain decoding at temperature 0; same distribution at T > 0). draft_max lowers the
        drafts per round (never above the trained block size). confidence_threshold (0 < t < 1) turns
        on adaptive length: drafts are verified left to right while the confidence head's
        sigmoid(c_k) >= t (needs a draft with a confidence head); None = fixed length.

        on_token(token_id) is called for each token as soon as it is decided (the native compute runs
        without the GIL; the GIL is taken only for the call). Returning False stops the generation
        (stop_reason "interrupted"); an exception raised in it (KeyboardInterrupt included) stops it and
        is re-raised here, with the model still usable.

        Returns (token ids, stats: n_prompt, n_generated, rounds, drafted, accepted, accepted_at, verified_at, tau,
        prefill_s, draft_s, verify_s, total_s, stop_reason)."""
        tokens = self._check_tokens(prompt_ids)
        if tokens.size == 0:
            raise ValueError("prompt_ids is empty")
        if tokens.size > self.n_ctx:
            raise ContextOverflowError(f"{tokens.size} prompt tokens do not fit in the context of {self.n_ctx}")
        if speculative and not self.has_draft:
            raise ValueError("speculative=True needs a model with its DSpark draft (loaded with load_draft=True)")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if draft_max is not None and draft_max < 0:
            raise ValueError(f"draft_max must be >= 0 or None, got {draft_max}")
        if confidence_threshold is not None and not 0.0 <= confidence_threshold < 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1) or None, got {confidence_threshold}")
        if on_token is not None and not callable(on_token):
            raise TypeError("on_token must be a callable taking one token id, or None")
        out, stats = self._ctx.generate(tokens, int(max_tokens), float(temperature), int(top_k), float(top_p),
                                        int(seed), bool(speculative), int(draft_max or 0),
                                        float(confidence_threshold or 0.0), bool(ignore_eos), on_token)
        return [int(t) for t in out], dict(stats)

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the native context and unmap the weights now (instead of at garbage collection)."""
        ctx, model = getattr(self, "_ctx", None), getattr(self, "_model", None)
        if ctx is not None:
            ctx.close()
        if model is not None:
            model.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"dsv4.Model({self.path!r}, n_ctx={self.n_ctx})"


__all__ = ["Model", "Dsv4Error"]
