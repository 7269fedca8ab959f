"""Public ops. Import kernels through these names only."""
from .momentum_delta_rule import *  # noqa: F401,F403
from .momentum_delta_rule import __all__  # noqa: F401

