"""tools/tiny_model.py (the batched training forward of tools/train_tiny.py) against the PyTorch
reference on the random-weight fixture: target logits and DSpark features, draft base logits and
pre-norm hidden, all within 1e-4 relative (max|Δ| / max|ref|); plus the export round trip and a
few training steps of the real pipeline at toy size."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from tests.reference.dspark import DSparkDraft  # noqa: E402
from tests.reference.model import V4Model  # noqa: E402
from tests.reference.weights import load_checkpoint  # noqa: E402
from tiny_model import TrainDraft, TrainTarget  # noqa: E402

TOL = 1e-4


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def ckpt(convert_checkpoint: Path):
    return load_checkpoint(convert_checkpoint)


@pytest.fixture(scope="module")
def reference(ckpt):
    return V4Model(ckpt)


def test_target_matches_reference(ckpt, reference) -> None:
    """Two sequences of 300 tokens in one batch: window wraps, CSA entries with the indexer
    dropping visible ones (top-4 of up to 75), both HCA boundaries (127, 255)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, ckpt.config.vocab_size, (300, 2), generator=g)
    with torch.no_grad():
        out = TrainTarget(ckpt.tensors, ckpt.config).forward(tokens)
        for b in range(2):
            ref = reference.forward(tokens[:, b])
            assert rel_err(out.logits[:, b], ref.logits) <= TOL
            assert rel_err(out.features[:, b], ref.features) <= TOL


def test_draft_matches_reference(ckpt, reference) -> None:
    """Anchor blocks at several positions of two sequences, all in one batched call, against
    the reference's inject (every committed position) + block."""
    cfg = ckpt.config
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (40, 2), generator=g)
    anchors = torch.tensor([1, 3, 8, 9, 20, 33, 5, 30])
    seq = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    with torch.no_grad():
        target = TrainTarget(ckpt.tensors, cfg)
        feats = target.forward(tokens).features
        draft = TrainDraft(ckpt.tensors, cfg)
        out = draft.forward(feats, anchors, seq, tokens[anchors, seq],
                            ckpt.tensors["head.weight"], ckpt.tensors["embed.weight"])
        ref_draft = DSparkDraft(reference)
        for n in range(len(anchors)):
            a, b = int(anchors[n]), int(seq[n])
            ref_feats = reference.forward(tokens[:a, b]).features
            ring = ref_draft.new_ring()
            ref_draft.inject(ring, ref_feats, list(range(a)))
            blk = ref_draft.block(ring, int(tokens[a, b]), a - 1)
            assert rel_err(out.base_logits[:, n], blk.base_logits) <= TOL
            assert rel_err(out.x_post[:, n], blk.x_post) <= TOL
