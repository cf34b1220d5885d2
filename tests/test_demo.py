"""`dsv4 demo` on the embedded model (models/pystd-tiny), and that model itself: the engine's logits
on a held-out prompt equal the PyTorch reference's on the shipped checkpoint, and its prompts come
from held-out files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsv4._demo import MODEL_NAME, cached_gguf, checkpoint_hash, embedded_checkpoint, load_prompts

REPO = Path(__file__).resolve().parents[1]


def test_embedded_checkpoint_is_found() -> None:
    ckpt = embedded_checkpoint()
    assert ckpt.name == MODEL_NAME and (ckpt / "config.json").is_file()
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["dspark_block_size"] >= 2 and cfg["num_hash_layers"] > 0
    assert {0, 4, 128} <= set(cfg["compress_ratios"])
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    assert size <= 25e6


def test_prompts_are_held_out() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    from train_tiny import is_heldout

    prompts = load_prompts(embedded_checkpoint())
    assert len(prompts) >= 4
    assert all(is_heldout(p["source"]) and p["ids"][0] == 0 for p in prompts)


def test_cache_is_keyed_by_content(tmp_path: Path) -> None:
    ckpt = embedded_checkpoint()
    gguf, fresh = cached_gguf(ckpt, tmp_path)
    assert fresh and gguf.exists() and checkpoint_hash(ckpt)[:16] in gguf.name
    mtime = gguf.stat().st_mtime_ns
    again, fresh = cached_gguf(ckpt, tmp_path)
    assert again == gguf and not fresh and gguf.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [gguf.name]      # no temporary left behind


def test_demo_runs(tmp_path: Path) -> None:
    env = {**os.environ, "DSV4_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "dsv4", "demo", "-n", "24", "--threads", "1"]
    outs = []
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert "(converted now)" in outs[0] and "(cached)" in outs[1]
    out = outs[1]
    assert "=== temperature 0 (greedy) ===" in out and "=== temperature 1 (seed 0) ===" in out
    assert out.count("speedup") == 2 and out.count("acceptance by draft position:") == 2
    assert "speculative == plain tokens: yes" in out
    assert "held-out" in out


def test_demo_rejects_bad_options(tmp_path: Path) -> None:
    env = {**os.environ, "DSV4_CACHE": str(tmp_path)}
    for extra, msg in ((["--prompt-index", "99"], "--prompt-index"), (["-n", "0"], "--max-tokens"),
                       (["--checkpoint", str(tmp_path)], "no config.json")):
        proc = subprocess.run([sys.executable, "-m", "dsv4", "demo", *extra], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode != 0 and msg in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_engine_matches_reference_on_embedded_model(tmp_path: Path) -> None:
    """The trained weights exercise every path (hash routing, CSA + indexer, HCA, MoE, mHC):
    the engine in exact mode (f32 activations) against the reference, 1e-3 relative."""
    torch = pytest.importorskip("torch")
    import dsv4
    from tests.reference.model import V4Model

    ckpt = embedded_checkpoint()
    gguf, _ = cached_gguf(ckpt, tmp_path)
    prompt = load_prompts(ckpt)[0]["ids"]
    ids = (prompt * 3)[:300]                      # past both HCA boundaries (127, 255)
    with dsv4.Model(gguf, n_ctx=512, n_threads=1, exact=True) as model:
        got = model.logits(ids)
    ref = V4Model.load(ckpt).forward(torch.tensor(ids)).logits.numpy()
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= 1e-3, err
