"""bench/spec.py runs end to end on the embedded model and on any GGUF with its own prompts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "spec.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "spec.py"), "--max-tokens", "24",
                           "--json", str(out), *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_spec_bench_on_embedded_model(tmp_path: Path) -> None:
    report = _run(tmp_path)
    for t in ("T=0", "T=1"):
        r = report["results"][t]
        assert r["tokens"] == 24 * report["prompts"]
        assert 1.0 <= r["tau"] <= 6.0
        assert len(r["acceptance_by_position"]) == 5
        assert all(0.0 <= a <= 1.0 for a in r["acceptance_by_position"])
        assert r["speedup"] > 0 and r["verify_over_decode"] > 0 and r["draft_over_decode"] > 0
    assert report["results"]["T=0"]["tau"] > 1.5  # the trained draft is accepted (2.61 measured at 200 tokens)


def test_spec_bench_with_model_prompts_and_draft_max(tmp_path: Path, converted) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([[5, 6, 7, 8, 9], list(range(20, 60))]))
    report = _run(tmp_path, "--model", str(converted()), "--prompt-ids-json", str(prompts), "--draft-max", "2")
    assert report["prompts"] == 2
    assert len(report["results"]["T=0"]["acceptance_by_position"]) <= 2


def test_spec_bench_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "spec.py"), "--max-tokens", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be positive" in proc.stderr
