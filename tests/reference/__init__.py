"""Plain-PyTorch reference of DeepSeek-V4 and its DSpark draft (see README.md)."""
