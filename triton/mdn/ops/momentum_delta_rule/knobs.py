"""The op's environment knobs (MDN_SCAN_FORM, MDN_SCAN_LOAD, MDN_SAVE_STATES, MDN_TRIL_INV, ...): one reader, so
that every knob treats an empty value as its default and rejects anything else with the same message."""
from __future__ import annotations

import os


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The value of environment variable ``name`` (unset or empty: ``default``); a ValueError naming the variable,
    the value and the choices for anything not in ``choices``."""
    val = os.environ.get(name, "") or default
    if val not in choices:
        raise ValueError(f"{name}={val!r}: expected one of {', '.join(repr(c) for c in choices)} "
                         f"(default {default!r})")
    return val


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")


def compile_mode() -> str | None:
    """MDN_CHUNK_COMPILE_MODE: the torch.compile mode of the op's compiled parts (the intra part and the pqk
    backward's chain rule): "default" (unset) or one of inductor's modes, e.g. "max-autotune-no-cudagraphs"
    (GEMM templates with fused epilogues, autotuned at the first call). None for torch.compile's default."""
    mode = env_choice("MDN_CHUNK_COMPILE_MODE", COMPILE_MODES, "default")
    return None if mode == "default" else mode
