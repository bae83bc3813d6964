"""Detectors that `edged-train fit --method NAME` can train. Each module exposes `METHOD`."""
