"""`dsv4 bench` (dsv4._bench) and the native read-bandwidth loop, on the tiny converted fixture."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dsv4 import _native
from dsv4._bench import bytes_per_token
from dsv4.cli import main
from dsv4.testing.fixture import FIXTURE_CONFIG

REQUIRED = ("bandwidth_gbps", "bytes_per_token", "decode_tps", "fraction_of_limit", "verify6_over_decode1",
            "prefill_tps", "threads")
TINY = ["--runs", "1", "--prompt", "8", "--decode-tokens", "2", "--prefill", "16", "--n-batch", "8",
        "--verify-reps", "1", "--bandwidth-mb", "8", "--quiet"]


@pytest.mark.parametrize("llama_cpp", [False, True], ids=["dsv4", "llama.cpp"])
def test_bench_writes_every_key_with_sane_values(converted, tmp_path, capsys, llama_cpp):
    out = tmp_path / "bench.json"
    assert main(["bench", str(converted(llama_cpp=llama_cpp)), "--threads", "1", "2", "--json", str(out), *TINY]) == 0
    table = capsys.readouterr().out
    assert "verify6/decode1" in table and "repacked at load" in table
    report = json.loads(out.read_text())
    assert [r["threads"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert set(REQUIRED) <= set(r)
        for key in REQUIRED:
            assert r[key] > 0, key
        assert r["bytes_per_token"] == report["bytes_per_token"]
        assert r["fraction_of_limit"] == pytest.approx(
            r["decode_tps"] * r["bytes_per_token"] / (r["bandwidth_gbps"] * 1e9), rel=1e-3, abs=1e-4)
        assert r["logits_finite"]
    assert report["arch"] == ("deepseek4" if llama_cpp else "dsv4")
    assert 1.0 < report["verify6_bytes_over_decode1"] < 6.0
    assert 1.0 <= report["verify6_bytes_over_decode1_measured"] < 6.0
    assert report["machine"]["cpus"] >= 1 and report["settings"]["runs"] == 1
    # the default load repacks where the CPU has packed kernels; the report says how much
    m = _native.Model(str(converted(llama_cpp=llama_cpp)), load_draft=False)
    assert report["packed_bytes"] == m.packed_bytes
    m.close()


def test_bytes_per_token_counts_k_of_e_experts_one_embedding_row_and_no_draft(converted):
    cfg = FIXTURE_CONFIG
    d, inter, n_exp, k = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    n_layer, vocab = cfg["num_hidden_layers"], cfg["vocab_size"]
    bpt = bytes_per_token(converted())
    # three MXFP4 stacks per layer (17 bytes per 32 weights), k of E experts read
    assert bpt["parts"]["layers_experts"] == n_layer * 3 * (n_exp * inter * d // 32 * 17) * k // n_exp
    assert bpt["parts"]["embedding_row"] == d * 2  # one BF16 row
    assert bpt["parts"]["head"] >= vocab * d * 2  # output.weight (BF16) and the output mHC / norm
    g = _native.gguf_read(str(converted()))
    layers = sum(t["nbytes"] for t in g["tensors"] if t["name"].startswith("blk.")
                 and int(t["name"].split(".")[1]) < n_layer)
    assert bpt["parts"]["layers_dense"] + bpt["parts"]["layers_experts"] < layers  # draft stages excluded
    # the draft file variant reads the same bytes per token as the one without a draft
    assert bytes_per_token(converted(draft=False))["total"] == bpt["total"]


def test_bench_help_and_bad_arguments(converted, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--decode-tokens" in text and "--threads" in text and "--json" in text
    assert main(["bench", str(converted()), "--runs", "0", "--quiet"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_native_read_bandwidth():
    assert _native.read_bandwidth(1, 1 << 20, 2) > 0
    assert _native.read_bandwidth(2, 1 << 20, 1, prefetch=True) > 0
    with pytest.raises(ValueError, match="n_threads"):
        _native.read_bandwidth(0)
    with pytest.raises(ValueError, match="at least"):
        _native.read_bandwidth(1, 16, 1)


def test_routed_expert_bytes_count_each_selected_expert_once(converted):
    """The forward pass counts the routed-expert bytes it streams: k experts per layer for one row,
    the union of the rows' choices (a whole number of experts, at most min(E, 6k)) for six."""
    path = converted()
    cfg = FIXTURE_CONFIG
    n_layer, n_exp, k = cfg["num_hidden_layers"], cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    bpt = bytes_per_token(path)
    per_expert = bpt["parts"]["layers_experts"] // (n_layer * k)  # gate + up + down of one expert
    tokens = np.random.default_rng(3).integers(0, cfg["vocab_size"], 40).astype(np.int32)
    steps = _native.routed_expert_bytes(str(path), tokens, 8, n_rows=6, n_steps=4)
    assert len(steps) == 4
    for one, six in steps:
        assert one == bpt["parts"]["layers_experts"]
        assert six % per_expert == 0 and one < six <= n_layer * min(n_exp, 6 * k) * per_expert
    with pytest.raises(ValueError, match="at least"):
        _native.routed_expert_bytes(str(path), tokens[:10], 8, n_rows=6, n_steps=4)

