"""The momentum delta rule op: Triton kernels (chunk, fused recurrent), torch references and input checks."""
from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4; must come first)
from .fused_recurrent import fused_recurrent_momentum_delta_rule
from .naive import naive_chunk_momentum_delta_rule, naive_recurrent_momentum_delta_rule
from .validation import check_inputs

_EXPORTS = (
    "chunk_momentum_delta_rule",
    "fused_recurrent_momentum_delta_rule",
    "naive_chunk_momentum_delta_rule",
    "naive_recurrent_momentum_delta_rule",
    "check_inputs",
)


def __getattr__(name):
    # __all__ is computed on demand so that an op imported at the end of this file (the chunk op:
    # `from .chunk import chunk_momentum_delta_rule`) is exported without editing a list.
    if name == "__all__":
        return [n for n in _EXPORTS if n in globals()]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
from .chunk import chunk_momentum_delta_rule  # noqa: E402
