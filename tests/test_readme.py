"""The README's examples work as written (run from a fresh directory)."""
from __future__ import annotations

import os
import re
import shlex
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


# What each README python block prints (in order; they run one after the other in one directory).
_EXPECTED_OUTPUT = [
    ["(3, 512) 512 dsv4", "16 tokens, tau ="],
    ["[0, ", "16 tokens, tau ="],  # tokenize (BOS id 0 first), then the completion and its statistics
]


def _readme_cli_lines(command: str) -> list[list[str]]:
    """The `dsv4 <command> ...` lines of the README's bash blocks, without their comments."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            if line.startswith(f"dsv4 {command} "):
                lines.append(shlex.split(line.split("  #")[0]))
    return lines


def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = _python_blocks()
    assert len(blocks) == len(_EXPECTED_OUTPUT), "README python examples changed: update _EXPECTED_OUTPUT"
    for code, expected in zip(blocks, _EXPECTED_OUTPUT):
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": ""})
        assert proc.returncode == 0, proc.stderr
        for text in expected:
            assert text in proc.stdout
    # The README's generate command works as written on the file the examples made.
    (generate,) = _readme_cli_lines("generate")
    proc = subprocess.run([sys.executable, "-m", "dsv4", *generate[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stderr and "speculative: tau" in proc.stderr


def test_readme_cli_commands_have_help() -> None:
    for cmd in ("convert", "inspect", "demo", "generate", "chat", "bench"):
        proc = subprocess.run([sys.executable, "-m", "dsv4", cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "usage: dsv4 " + cmd in proc.stdout


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's first command as written (defaults); tests/test_demo.py checks the details."""
    env = {**os.environ, "DSV4_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "dsv4", "demo"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "speculative == plain tokens: yes" in proc.stdout
    assert proc.stdout.count("tau ") == 2
