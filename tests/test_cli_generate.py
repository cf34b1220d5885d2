"""`dsv4 generate` and `dsv4 chat`: streamed text on stdout, statistics on stderr, --json, errors."""
from __future__ import annotations

import json
import re
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


def test_chat_is_interactive_on_a_terminal(converted) -> None:
    """On a pty: a prompt per turn, each reply streamed with its statistics, history kept, empty line quits."""
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dsv4", "chat", str(converted()), "-n", "8", "--temperature", "0",
                             "--n-ctx", "256"], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 120
        while seen.count(marker) < count:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([master], [], [], 1.0)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"> ", 1)
        os.write(master, b"hello\n")
        read_until(b"tokens/s", 1)
        read_until(b"> ", 2)
        os.write(master, b"and again\n")
        read_until(b"tokens/s", 2)
        read_until(b"> ", 3)
        os.write(master, b"\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode(errors="replace")
    assert "dsv4 chat with" in text and text.count("finish:") == 2 and "Traceback" not in text
    first, second = (int(n) for n in re.findall(r"\(prompt (\d+) tokens", text))
    assert second > first + 5  # the second turn carries the first exchange
