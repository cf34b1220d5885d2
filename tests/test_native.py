"""The native unit tests (native/tests/*.cpp) built with CMake and run, so the suite covers them too:
every SIMD matmul kernel against its scalar twin on random data, bit for bit where the design
promises it (test_matmul), the type tables (test_types), the thread pool (test_threadpool) and the
forward pass's vector helpers (test_forward_ops).

The build is a Release build of the engine's static library plus the test programs, in a temporary
directory (about 20 s on 2 cores). CMake and Ninja come from the test extras (`pip install
'.[test]'`) or PATH; without them, or without a C++ compiler, the tests are skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NATIVE_TESTS = sorted(p.stem for p in (ROOT / "native" / "tests").glob("test_*.cpp"))


def _tool(module: str, attr: str, exe: str) -> str | None:
    """A build tool from its PyPI package (the test extras) or else PATH."""
    try:
        mod = __import__(module)
        path = Path(getattr(mod, attr)) / exe
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    return shutil.which(exe)


@pytest.fixture(scope="module")
def native_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
    ninja = _tool("ninja", "BIN_DIR", "ninja")
    if not cmake:
        pytest.skip("cmake not found (pip install '.[test]' brings it)")
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler")
    build = tmp_path_factory.mktemp("native-build")
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DDSV4_BUILD_TESTS=ON", "-DDSV4_BUILD_PYTHON=OFF"]
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    proc = subprocess.run(configure, capture_output=True, text=True)
    assert proc.returncode == 0, f"cmake configure failed:\n{proc.stdout}\n{proc.stderr}"
    proc = subprocess.run([cmake, "--build", str(build), "-j", "2", "--target", *NATIVE_TESTS],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"native test build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return build


def test_every_native_test_is_listed() -> None:
    assert {"test_matmul", "test_types", "test_threadpool", "test_forward_ops"} <= set(NATIVE_TESTS)


@pytest.mark.parametrize("name", NATIVE_TESTS)
def test_native(native_build: Path, name: str) -> None:
    exe = native_build / name
    assert exe.exists(), f"{exe} was not built"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "ok" in proc.stdout or "passed" in proc.stdout, proc.stdout
