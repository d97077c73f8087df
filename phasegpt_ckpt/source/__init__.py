"""Bytes in: what the artifacts are (manifest), where they are mirrored (mirrors), and how their bytes move (transfer, web)."""
