"""`verify`: the correctness gate of one sweep point (see `bench`), without timing."""
from __future__ import annotations

from .bench import run_point


def run(params: dict, ctx) -> dict:
    return run_point(params, ctx, timed=False)
