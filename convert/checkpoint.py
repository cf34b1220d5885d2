"""A DeepSeek-V4 checkpoint directory, opened lazily: config, shards, index, tokenizer files.

Only the safetensors headers are read on open. Tensor bytes are reached through memory maps, one
tensor at a time (`raw`), or copied in the kernel straight from the shard (`source`), so opening
a 160 GB checkpoint costs a few megabytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dsv4.errors import ConversionError

from .arch import V4Config
from .safetensors import SafetensorsFile, TensorInfo

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from exc


@dataclass(frozen=True)
class Source:
    """Where one tensor's bytes live: the shard, its file descriptor and the absolute offset."""
    shard: SafetensorsFile
    info: TensorInfo


class Checkpoint:
    """config.json + every tensor of the shards, by name; nothing is read before it is asked for."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise ConversionError(f"{self.dir}: not a checkpoint directory")
        self.raw_config: dict[str, Any] = read_json(self.dir / CONFIG_FILE)
        if not isinstance(self.raw_config, dict):
            raise ConversionError(f"{self.dir / CONFIG_FILE}: not a JSON object")
        self.config = V4Config.from_dict(self.raw_config, self.dir / CONFIG_FILE)
        self._shards: list[SafetensorsFile] = []
        self._where: dict[str, SafetensorsFile] = {}
        try:
            self._open_shards()
        except BaseException:
            self.close()
            raise

    def _open_shards(self) -> None:
        index_path = self.dir / INDEX_FILE
        if index_path.exists():
            index = read_json(index_path)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{index_path}: no weight_map")
            files = sorted(set(weight_map.values()))
        else:
            weight_map = None
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
            if not files:
                raise ConversionError(f"{self.dir}: no *.safetensors files and no {INDEX_FILE}")
        for fname in files:
            path = self.dir / fname
            if not path.is_file():
                raise ConversionError(f"{path}: shard listed in {INDEX_FILE} is missing")
            shard = SafetensorsFile(path)
            self._shards.append(shard)
            for name in shard.names():
                if name in self._where:
                    raise ConversionError(f"tensor {name!r} is in both {self._where[name].path} and {path}")
                self._where[name] = shard
        if weight_map is not None:
            for name, fname in weight_map.items():
                shard = self._where.get(name)
                if shard is None or shard.path.name != fname:
                    raise ConversionError(f"{self.dir / fname}: {INDEX_FILE} lists tensor {name!r} there, "
                                          f"but the file does not hold it")

    # -- tensors ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def info(self, name: str) -> TensorInfo:
        shard = self._where.get(name)
        if shard is None:
            raise ConversionError(f"{self.dir}: missing tensor {name!r}")
        return shard.info(name)

    def source(self, name: str) -> Source:
        return Source(self._where[name], self.info(name))

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes: a read-only uint8 view of the shard's memory map."""
        return self._where[name].raw(name)

    def array(self, name: str) -> np.ndarray:
        return self._where[name].array(name)

    def release(self, name: str) -> None:
        """Done with a tensor: drop its mapped pages from our resident set."""
        self._where[name].release(name)

    def prefetch(self, name: str) -> None:
        self._where[name].prefetch(name)

    def stage_ids(self) -> list[int]:
        """Draft stages present, from the `mtp.N.` prefixes (num_nextn_predict_layers is legacy)."""
        ids = set()
        for name in self._where:
            parts = name.split(".", 2)
            if parts[0] == "mtp" and len(parts) == 3 and parts[1].isdigit():
                ids.add(int(parts[1]))
        return sorted(ids)

    def shard_paths(self) -> list[Path]:
        return [s.path for s in self._shards]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    # -- tokenizer files -------------------------------------------------------------------------
    def tokenizer_json_text(self) -> str:
        path = self.dir / TOKENIZER_FILE
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConversionError(f"{path}: file not found (the tokenizer is required)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConversionError(f"{path}: cannot read ({exc})") from exc

    def tokenizer_config(self) -> dict[str, Any]:
        path = self.dir / TOKENIZER_CONFIG_FILE
        if not path.exists():
            return {}
        cfg = read_json(path)
        if not isinstance(cfg, dict):
            raise ConversionError(f"{path}: not a JSON object")
        return cfg

    def close(self) -> None:
        for shard in self._shards:
            shard.close()
        self._shards.clear()
        self._where.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
