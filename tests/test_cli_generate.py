"""`dsv4 generate` and `dsv4 chat`: streamed text on stdout, statistics on stderr, --json, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import dsv4


def _dsv4(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsv4", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("cmd", ["generate", "chat", "convert", "inspect", "demo", "bench"])
def test_every_command_has_help(cmd: str) -> None:
    proc = _dsv4(cmd, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: dsv4 {cmd}")


def test_generate_streams_the_api_text_and_reports_statistics(converted) -> None:
    path = str(converted())
    with dsv4.Model(path, n_ctx=256) as model:
        want = model.create_completion("def class", max_tokens=24, temperature=0.0)
    for extra in ([], ["--speculative", "--draft-max", "3"]):
        proc = _dsv4("generate", path, "-p", "def class", "-n", "24", "--temperature", "0", "--n-ctx", "256", *extra)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == want["choices"][0]["text"] + "\n"
        assert "tokens/s" in proc.stderr and "tau" in proc.stderr
        if extra:
            assert "speculative: tau" in proc.stderr and "by position [" in proc.stderr
    proc = _dsv4("generate", path, "-n", "24", "--temperature", "0", "--n-ctx", "256", "--json", stdin="def class")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["choices"][0]["text"] == want["choices"][0]["text"] and res["usage"] == want["usage"]
    assert {"tau", "rounds", "accepted_at", "tokens_per_s"} <= set(res["dsv4"])


def test_chat_single_shot_and_stdin(converted) -> None:
    path = str(converted())
    with dsv4.Model(path, n_ctx=512) as model:
        want = model.create_chat_completion([{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "hello"}],
                                            reasoning="high", max_tokens=20, temperature=0.0)
    args = ["chat", path, "-s", "Be brief.", "--reasoning", "high", "-n", "20", "--temperature", "0", "--n-ctx", "512"]
    proc = _dsv4(*args, "--json", "-p", "hello")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["choices"][0]["message"] == want["choices"][0]["message"]
    proc = _dsv4(*args, stdin="hello")  # not a terminal: one message from stdin
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want["choices"][0]["message"]["content"] + "\n"
    assert want["choices"][0]["message"]["reasoning_content"] in proc.stderr
    assert "tokens/s" in proc.stderr and "tau" in proc.stderr


def test_cli_errors(converted, tmp_path) -> None:
    proc = _dsv4("generate", str(tmp_path / "missing.gguf"), "-p", "x")
    assert proc.returncode == 1 and "no such model file" in proc.stderr
    proc = _dsv4("generate", str(converted(draft=False)), "-p", "x", "--speculative")
    assert proc.returncode == 1 and "DSpark draft" in proc.stderr and "Traceback" not in proc.stderr
    proc = _dsv4("chat", str(converted()), "-p", "x", "--reasoning", "deep")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = _dsv4("generate", str(converted()), "-p", "x", "--top-p", "0")
    assert proc.returncode == 2 and "top_p must be in (0, 1]" in proc.stderr and "Traceback" not in proc.stderr
    proc = _dsv4("generate", str(converted()), "-p", "word " * 300, "--n-ctx", "64")
    assert proc.returncode == 1 and "context" in proc.stderr and "Traceback" not in proc.stderr
