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
