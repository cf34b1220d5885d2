"""Helpers for tests and demos: deterministic tiny checkpoints in DeepSeek-V4's native format."""
