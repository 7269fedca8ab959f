"""`mdn.ops.naive`: the plain-torch references, re-exported from the op package."""
from .momentum_delta_rule.naive import *  # noqa: F401,F403
from .momentum_delta_rule.naive import l2norm, naive_recurrent_momentum_delta_rule  # noqa: F401
