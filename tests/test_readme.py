"""The README's examples work as written (run from a fresh directory)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    assert "python -m pip install . && dsv4 demo" in text
    assert "python -m pip install '.[test]' && python -m pytest -q" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pip install '.[test]' && python -m pytest -q" in ci


def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = _python_blocks()
    assert blocks, "README has no python example"
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": ""})
        assert proc.returncode == 0, proc.stderr
        assert "(3, 512) 512 dsv4" in proc.stdout
        assert "16 tokens, tau =" in proc.stdout


def test_readme_cli_commands_have_help() -> None:
    for cmd in ("convert", "inspect", "demo"):
        proc = subprocess.run([sys.executable, "-m", "dsv4", cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "usage: dsv4 " + cmd in proc.stdout


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "DSV4_CACHE": str(tmp_path / "cache")}
    for _ in range(2):  # second run uses the cached checkpoint and GGUF
        proc = subprocess.run([sys.executable, "-m", "dsv4", "demo"], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "architecture:    dsv4" in proc.stdout
        assert "DSpark" in proc.stdout
        assert "greedy decode 32 tokens" in proc.stdout
