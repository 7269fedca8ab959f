"""Compatibility shim for the Triton 3.6 interpreter (TRITON_INTERPRET=1) with NumPy >= 2.4.

The interpreter keeps kernel scalars as 1-element arrays and converts them with ``int(array)`` when a runtime
value is used as a loop bound (``for t in range(0, T)``). NumPy 2.4 turned that conversion into a TypeError,
so every kernel with a runtime loop bound fails under the interpreter (triton-lang/triton issue 9171, fixed
upstream after 3.6). This re-registers ``__index__`` with an explicit element read. It changes nothing when the
interpreter is off, when NumPy still accepts the conversion, or when Triton already has the fix.
"""
from __future__ import annotations

import numpy as np
import triton


def _needs_patch() -> bool:
    if not triton.knobs.runtime.interpret:
        return False
    try:
        int(np.array([1]))
    except TypeError:
        return True
    return False


def apply() -> None:
    if not _needs_patch():
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_mdn_patched", False):
        return

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    _patch_lang_tensor._mdn_patched = True
    interpreter._patch_lang_tensor = _patch_lang_tensor


apply()
