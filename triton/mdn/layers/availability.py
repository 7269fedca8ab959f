"""Which optional mixer backends can be imported here (fla for GDN/KDA/Mamba2 kernels, the MDN Triton op)."""
from __future__ import annotations

import functools
import importlib
import os


class MixerUnavailable(ImportError):
    """A mixer's backend is not installed; the runner reports this as error kind ``unavailable``."""


@functools.lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # ImportError, or a broken install raising anything else
        return False


def fla_ops_available() -> bool:
    """fla's GDN op (pure Triton; works without transformers)."""
    return _importable("fla.ops.gated_delta_rule")


def fla_layers_available() -> bool:
    """fla's layer classes (KDA, Mamba2); these import transformers too."""
    return _importable("fla.layers")


def mdn_op(name: str):
    """``mdn.ops.<name>`` when it exists (the Triton op may not have landed yet), else None."""
    if os.environ.get("MDN_DISABLE_TRITON_OP") == "1":
        return None
    try:
        ops = importlib.import_module("mdn.ops")
    except Exception:
        return None
    return getattr(ops, name, None)


def bypass_fla_hopper_guard() -> bool:
    """Opt-in (MDN_FLA_BYPASS_HOPPER_GUARD=1): let fla's gated backward run on Hopper with Triton in [3.4, 3.7.1).

    fla refuses there because a Triton codegen bug corrupts dk (fla issue 640; anchors §0). Bypassing gives a
    valid *speed* for benchmarks; the gradients must not be trusted. Returns True when the guard was disabled.
    """
    if os.environ.get("MDN_FLA_BYPASS_HOPPER_GUARD") != "1":
        return False
    try:
        chunk_o = importlib.import_module("fla.ops.common.chunk_o")
    except Exception:
        return False
    if getattr(chunk_o, "IS_NVIDIA_HOPPER", False):
        chunk_o.IS_NVIDIA_HOPPER = False
    return True
