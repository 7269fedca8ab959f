"""How the op's Triton kernels become torch.library operators.

On a GPU, ``kernel_op`` is ``torch.library.triton_op``: a custom op that torch.compile decomposes into its
kernels, which inductor then launches from its generated code. The forward's intra part runs compiled
(chunk.py::_run_intra), and with plain custom ops every call went through the dispatcher, the custom-op wrappers
and Triton's Python launcher for each of them: that host time made the forward host-bound at H16 K128 V128,
T = 2048 (one H200: 2.2 ms of host time per call for 1.47 ms of kernels; docs/BENCHMARKS.md §1.24). Eagerly a
triton_op is an ordinary custom op.

Under the Triton interpreter (TRITON_INTERPRET=1, the CPU test path) ``torch.library.wrap_triton`` does not take
the interpreter's kernels, so there ``kernel_op`` is ``torch.library.custom_op`` with the given fake
implementation, and ``wrap_triton`` returns the kernel itself.

A triton_op's body runs again when torch.compile traces it (with fake tensors), and what it reads from the
environment then is fixed in the compiled graph: its callers read the knobs (MDN_INTRA_QK_CONFIG,
MDN_TRIL_INV_FWD) in code that dynamo traces, which guards on them, and pass them in as arguments.
MDN_POISON_OUTPUTS is read in the body (alloc.empty) and so fixed per compiled graph.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton


def interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def wrap_triton(kernel):
    """torch.library.wrap_triton(kernel), or the kernel itself under the interpreter. Call it by this name on the
    kernel's own name in the op body (``wrap_triton(my_kernel)[grid](...)``): torch finds the kernels of a
    triton_op by reading its source for such calls (for its compile caches' keys)."""
    return kernel if interpreting() else torch.library.wrap_triton(kernel)


def kernel_op(name: str, fake: Callable) -> Callable:
    """Decorator: the op ``name`` (no mutated arguments) from a function that launches Triton kernels through
    ``wrap_triton``; ``fake`` is its fake implementation where a plain custom op is made (the interpreter)."""
    def dec(fn):
        if interpreting():
            op = torch.library.custom_op(name, mutates_args=())(fn)
            op.register_fake(fake)
            return op
        return torch.library.triton_op(name, mutates_args=())(fn)
    return dec
