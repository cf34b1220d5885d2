"""Plain-PyTorch reference of DeepSeek-V4 and its DSpark draft: the oracle for the native engine.

See README.md for what lives here and the numerics it guarantees.
"""
from .config import Config
from .dspark import DraftBlock, DraftRing, DSparkDraft
from .model import Cache, ForwardOutput, V4Model
from .weights import Checkpoint, load_checkpoint

__all__ = ["Cache", "Checkpoint", "Config", "DSparkDraft", "DraftBlock", "DraftRing", "ForwardOutput",
           "V4Model", "load_checkpoint"]
