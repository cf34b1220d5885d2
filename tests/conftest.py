# --- converter (tests/test_convert*.py) -------------------------------------------------------------
# Session-scoped: the tiny checkpoint and its conversions are built once and shared read-only;
# a test that edits a checkpoint copies it first (convert_checkpoint_copy).
import shutil as _shutil
from pathlib import Path as _Path

import pytest as _pytest


@_pytest.fixture(scope="session")
def convert_checkpoint(tmp_path_factory: _pytest.TempPathFactory) -> _Path:
    """The deterministic V4 + 3-stage DSpark fixture in DeepSeek's format (2 shards + index)."""
    from dsv4.testing.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("convert") / "ckpt", seed=0, shards=2)


@_pytest.fixture(scope="session")
def converted(tmp_path_factory: _pytest.TempPathFactory, convert_checkpoint: _Path):
    """convert(variant) -> output path, each variant converted once per session."""
    from dsv4.convert.main import convert

    out_dir = tmp_path_factory.mktemp("converted")
    cache: dict[tuple, _Path] = {}

    def get(llama_cpp: bool = False, outtype: str | None = None, draft: bool = True) -> _Path:
        key = (llama_cpp, outtype, draft)
        if key not in cache:
            name = f"{'lcpp' if llama_cpp else 'dsv4'}-{outtype or 'default'}-{'draft' if draft else 'nodraft'}.gguf"
            convert(convert_checkpoint, out_dir / name, llama_cpp=llama_cpp, outtype=outtype, draft=draft)
            cache[key] = out_dir / name
        return cache[key]

    return get


@_pytest.fixture()
def convert_checkpoint_copy(tmp_path: _Path, convert_checkpoint: _Path) -> _Path:
    """A private, editable copy of the fixture checkpoint."""
    dst = tmp_path / "ckpt"
    _shutil.copytree(convert_checkpoint, dst)
    return dst
