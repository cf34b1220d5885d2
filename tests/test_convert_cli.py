"""`dsv4 convert` and `dsv4 inspect` through the command line entry point (dsv4.cli.main)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsv4.cli import main
from dsv4.convert.transforms import Fp4Repacker
from dsv4.quant import fp4_to_mxfp4


def test_cli_convert_then_inspect(convert_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["convert", str(convert_checkpoint), str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # --quiet: nothing at all
    assert out.exists() and not (tmp_path / "m.gguf.tmp").exists()

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "architecture:    dsv4" in text and "MXFP4" in text and "I8" in text
    assert "dspark.stage_count = 3" in text and "context length:  4096" in text

    assert main(["inspect", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["architecture"] == "dsv4" and d["draft"]["present"] and d["block_count"] == 6
    assert d["tokenizer"]["tokens"] == 512 and d["tokenizer"]["huggingface_json"]
    assert set(d["types"]) == {"BF16", "F32", "I8", "I32", "MXFP4"}
    assert d["parameters"] > 0 and d["fp8_scale_elements"] > 0


def test_cli_llama_cpp_writes_target_and_sidecar(convert_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["convert", str(convert_checkpoint), str(out), "--llama-cpp"]) == 0
    err = capsys.readouterr().err
    assert "mtp-m.gguf" in err  # names what it wrote (not a TTY: no progress bar)
    assert main(["inspect", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["architecture"] == "deepseek4" and d["draft"]["where"] == "sidecar mtp-m.gguf"
    assert main(["inspect", str(tmp_path / "mtp-m.gguf"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["architecture"] == "dflash" and d["draft"]["keys"]["target_layers"] == [4, 5, 6]


def test_cli_refuses_to_overwrite_without_force(convert_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["convert", str(convert_checkpoint), str(out), "--quiet", "--no-draft"]) == 0
    before = out.read_bytes()
    assert main(["convert", str(convert_checkpoint), str(out), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["convert", str(convert_checkpoint), str(out), "--quiet", "--force"]) == 0
    assert out.read_bytes() != before  # now with the draft


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "o.gguf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dsv4 convert: error:") and "nope" in err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert main(["inspect", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 7, 16383, 16384, 16385, 40000])
def test_fast_fp4_repack_is_bit_exact(n):
    rng = np.random.default_rng(n)
    packed = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    packed[: min(n, 256), 0] = np.arange(min(n, 256))  # every byte value, both nibbles
    scale = rng.integers(0, 255, n, dtype=np.uint8)
    rp = Fp4Repacker(piece=16384)
    out = np.empty((n, 17), np.uint8)
    buf = np.empty(n * 16 + 1, np.uint8)  # an unaligned source, as a view into a memory map can be
    src = buf[1:].reshape(n, 16)
    src[...] = packed
    rp.repack(src, scale, out)
    assert np.array_equal(out, fp4_to_mxfp4(packed.reshape(n, 16), scale.reshape(n, 1)))


def test_fast_fp4_repack_whole_tensor_form():
    rng = np.random.default_rng(0)
    packed = rng.integers(-128, 128, (64, 96), dtype=np.int8)
    scale = rng.integers(100, 140, (64, 6), dtype=np.uint8)
    assert np.array_equal(Fp4Repacker(piece=7)(packed, scale), fp4_to_mxfp4(packed, scale))


def test_progress_bar_counts_bytes(convert_checkpoint, tmp_path, capsys):
    from dsv4.convert.main import convert

    res = convert(convert_checkpoint, tmp_path / "p.gguf", progress=True)
    err = capsys.readouterr().err
    assert "convert" in err and "100%" in err
    assert res.bytes_written == sum(
        t.n_bytes for t in __import__("gguf").GGUFReader(str(res.outputs[0])).tensors)


def _llama_bin(name: str) -> Path | None:
    import os

    d = os.environ.get("DSV4_LLAMA_CPP_BIN")  # a llama.cpp build's bin/ (we never build one in tests)
    p = Path(d) / name if d else None
    return p if p is not None and p.exists() else None


@pytest.mark.slow
def test_stock_llama_cpp_loads_target_and_runs_dspark_draft(converted):
    import subprocess

    exe = _llama_bin("llama-speculative-simple")
    if exe is None:
        pytest.skip("set DSV4_LLAMA_CPP_BIN to a llama.cpp build's bin/ to run this")
    target = converted(llama_cpp=True)
    side = target.with_name("mtp-" + target.name)
    proc = subprocess.run([str(exe), "-m", str(target), "-md", str(side), "--spec-type", "draft-dspark",
                           "-p", "def class return", "-n", "8", "-c", "256"],
                          capture_output=True, timeout=600)
    log = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert "block_size=5, mask_token_id=7, n_extract=3, sample_from_anchor=true" in log
    assert "n_drafted" in log
