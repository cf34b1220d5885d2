"""tools/tiny_model.py (the batched training forward of tools/train_tiny.py) against the PyTorch
reference on the random-weight fixture: target logits and DSpark features, draft base logits and
pre-norm hidden, all within 1e-4 relative (max|Δ| / max|ref|); plus the export round trip and a
few training steps of the real pipeline at toy size."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from tests.reference.dspark import DSparkDraft  # noqa: E402
from tests.reference.model import V4Model  # noqa: E402
from tests.reference.weights import load_checkpoint, read_safetensors  # noqa: E402
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


TOY = ["--vocab", "320", "--dim", "128", "--window", "8", "--index-topk", "2", "--experts", "4",
       "--moe-inter", "64", "--markov-rank", "16", "--seq", "32", "--batch", "2", "--anchors", "4",
       "--max-files", "12", "--threads", "1", "--save-every", "1", "--eval-every", "100"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The whole pipeline at toy size: tokenizer, 2 target steps, 2 draft steps, export."""
    import train_tiny

    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("model") / "toy"
    args = ["--work", str(work), "--out", str(out), *TOY]
    assert train_tiny.main(["all", "--target-steps", "2", "--draft-steps", "2", *args]) == 0
    return work, out, args


def test_pipeline_resumes(toy_run, capsys) -> None:
    """A second run with more steps continues from the saved step instead of starting over."""
    import train_tiny

    work, out, args = toy_run
    before = torch.load(work / "target.pt", weights_only=False)["state"]
    assert before["step"] == 2
    assert train_tiny.main(["target", "--target-steps", "3", *args]) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    assert torch.load(work / "target.pt", weights_only=False)["state"]["step"] == 3


def test_export_holds_the_trained_weights(toy_run) -> None:
    """Every exported tensor decodes (through the reference's own loader) to the trained value:
    F32 exactly, BF16 within bf16 rounding, FP8 / FP4 within their block quantization."""
    import json

    import train_tiny

    work, out, _ = toy_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 320 and cfg["dspark_block_size"] == 5
    assert cfg["compress_ratios"] == [0, 4, 128, 4, 128, 4, 0, 0]
    sizes = train_tiny.Sizes(**json.loads((work / "sizes.json").read_text()))
    params = train_tiny.load_params(work, cfg, sizes)
    ckpt = load_checkpoint(out)
    assert set(ckpt.tensors) == set(params)
    assert ckpt.stage_count == 2
    kinds = {name: t.dtype for name, t in read_safetensors(out / "model.safetensors").items()}
    fp8 = {n for n in ckpt.quantized if f"{n}.weight" in params and ".experts." not in n}
    for name, trained in params.items():
        got = ckpt.tensors[name]
        prefix = name[:-len(".weight")]
        if not trained.is_floating_point():
            assert torch.equal(got, trained), name
        elif prefix in ckpt.quantized:
            tol = 0.08 if prefix in fp8 else 0.35        # relative RMS error of e4m3 / e2m1 blocks
            err = float((got - trained).pow(2).mean().sqrt() / trained.pow(2).mean().sqrt())
            assert err <= tol, (name, err)
        else:
            assert kinds[name] in ("F32", "BF16"), name
            bound = 0.0 if kinds[name] == "F32" else 2.0 ** -8
            assert float(((got - trained).abs() - bound * trained.abs()).max()) <= 0.0, name
    prompts = json.loads((out / "prompts.json").read_text())["prompts"]
    assert prompts and all(train_tiny.is_heldout(p["source"]) for p in prompts)
    export = json.loads((work / "export.json").read_text())
    assert math.isfinite(export["heldout_ce_float"]) and math.isfinite(export["heldout_ce_exported"])
