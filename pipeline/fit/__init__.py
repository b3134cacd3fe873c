"""The stages of `sgaus fit`, one module each (static, anchors, refine, velocity, dynamic), the
geometry they share, and the runner that caches them (pipeline/fit/runner.py)."""
