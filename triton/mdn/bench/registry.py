"""The op registry: MDN and its baselines behind one contract.

Every entry is a ``BenchOp``:

* ``load(variant, params)`` -> the implementation (imported lazily); raises ``Unavailable`` with the reason when
  a library, a device or a configuration is missing, so a sweep records ``unavailable`` instead of crashing;
* ``make_inputs(shape, dtype, device, constraint, seed)`` -> a dict of input tensors (q, k, v and the op's gates,
  all drawn from the same seeded distributions for every op, see ``gates.py``);
* ``call(impl, inputs, variant)`` -> (o [B, T, H, V], final state or None);
* ``reference(inputs64)`` -> the same from a float64 reference (``references.py``, or MDN's naive recurrence);
* ``fwd(...)`` / ``fwdbwd(...)`` -> zero-argument callables for the timers (``fwdbwd`` back-propagates
  sum(o * do)).

Names: mdn (``mdn.ops.chunk_momentum_delta_rule``), mdn_recurrent (fused recurrent), mdn_naive (the plain-torch
chunk form), official (HuuYuLong/MomentumDeltaNet ``chunk_mode_rule``, when ``official_path`` or
$MDN_OFFICIAL_PATH points at its ``fla`` folder's parent), gdn (fla ``chunk_gated_delta_rule``), kda (fla
``chunk_kda``), ssd (fla ``chunk_simple_gla``, the Mamba2/SSD form) and sdpa (torch SDPA, flash backend on CUDA).
The Go side keeps the same list (sweep.Ops).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from . import gates as gates_mod
from . import references

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
CONFIG_KEYS = ("BK", "BV", "num_warps", "num_stages")


class Unavailable(Exception):
    """The op cannot run here (missing library, device or configuration); the message says why."""


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    H: int
    K: int
    V: int

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        try:
            s = cls(**{n: int(d[n]) for n in "BTHKV"})
        except KeyError as exc:
            raise ValueError(f"shape is missing {exc.args[0]!r}: {d}") from None
        for n in "BTHKV":
            if getattr(s, n) < 1:
                raise ValueError(f"shape {n}={getattr(s, n)}: expected >= 1")
        return s

    @property
    def tokens(self) -> int:
        return self.B * self.T


@dataclass(frozen=True)
class Variant:
    """The launch spec of a sweep point (what its variant hash names)."""
    op: str
    chunk_size: int = 64
    BK: int | str = "auto"
    BV: int | str = "auto"
    num_warps: int | str = "auto"
    num_stages: int | str = "auto"
    constraint: str = "layer_init"
    dtype: str = "bfloat16"

    @classmethod
    def from_params(cls, p: dict) -> "Variant":
        if p.get("op") not in OPS:
            raise ValueError(f"op={p.get('op')!r}: expected one of {', '.join(OPS)}")
        if p.get("dtype", "bfloat16") not in DTYPES:
            raise ValueError(f"dtype={p.get('dtype')!r}: expected one of {', '.join(DTYPES)}")
        gates_mod.check_name(p.get("constraint", "layer_init"))
        kw = {k: p[k] for k in ("chunk_size", *CONFIG_KEYS, "constraint", "dtype") if k in p}
        if "chunk_size" in kw:
            kw["chunk_size"] = int(kw["chunk_size"])
        return cls(op=p["op"], **kw)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def overrides(self) -> dict:
        """The tile/warp/stage settings that are not 'auto'."""
        return {k: getattr(self, k) for k in CONFIG_KEYS if getattr(self, k) != "auto"}


class BenchOp:
    name = ""
    summary = ""
    impl_name = ""
    reference_name = ""
    chunk_sizes: tuple | None = None  # None: the op has no chunks and ignores chunk_size
    has_state = True

    # ------------------------------------------------------------------------------------------- per op
    def load(self, variant: Variant, params: dict) -> Callable:
        raise NotImplementedError

    def select(self, base: dict) -> dict:
        """The op's inputs from the common draw {q, k, v, log_alpha, beta, log_mu, eta}."""
        raise NotImplementedError

    def call(self, impl: Callable, x: dict, variant: Variant):
        raise NotImplementedError

    def reference(self, x: dict):
        raise NotImplementedError

    def notes(self, variant: Variant, mode: str) -> list[str]:
        return []

    @property
    def impl_label(self) -> str:
        return self.impl_name

    def cache_token(self) -> tuple:
        """What, besides the variant, shape, mode and environment, decides this op's gate once loaded: its class,
        implementation label and load-time state (instance attributes: tile overrides, fallback, backend,
        path). Part of the gate cache key (check.gate_key); override to add state kept elsewhere."""
        cls = type(self)
        return (cls.__module__, cls.__qualname__, self.impl_label, repr(sorted(vars(self).items())))

    # ------------------------------------------------------------------------------------------- shared
    def supports(self, variant: Variant, shape: Shape, device: str) -> None:
        """Raise Unavailable for a configuration this op cannot run (before anything is allocated)."""
        if self.chunk_sizes is not None and variant.chunk_size not in self.chunk_sizes:
            raise Unavailable(f"{self.name} supports chunk_size {', '.join(map(str, self.chunk_sizes))}, "
                              f"not {variant.chunk_size}")

    def make_inputs(self, shape: Shape, dtype: torch.dtype, device, constraint: str, seed: int = 0) -> dict:
        B, T, H, K, V = shape.B, shape.T, shape.H, shape.K, shape.V
        g = torch.Generator(device=device).manual_seed(int(seed))
        base = {
            "q": torch.randn(B, T, H, K, generator=g, device=device, dtype=torch.float32).to(dtype),
            "k": torch.randn(B, T, H, K, generator=g, device=device, dtype=torch.float32).to(dtype),
            "v": torch.randn(B, T, H, V, generator=g, device=device, dtype=torch.float32).to(dtype),
        }
        gdtype = torch.float64 if dtype == torch.float64 else torch.float32
        base.update({n: t.to(device=device, copy=True) for n, t in _cpu_gates(constraint, B, T, H, int(seed),
                                                                                gdtype).items()})
        return self.select(base)

    def fwd(self, impl: Callable, x: dict, variant: Variant) -> Callable[[], None]:
        def run():
            with torch.no_grad():
                self.call(impl, x, variant)
        return run

    def fwdbwd(self, impl: Callable, x: dict, variant: Variant, do: torch.Tensor) -> Callable[[], None]:
        def run():
            o, _ = self.call(impl, x, variant)
            o.backward(do)
        return run


_GATE_DRAWS: "OrderedDict[tuple, dict]" = OrderedDict()
GATE_DRAWS_MAX = 4  # a sweep's fwd and fwdbwd points (and every op) at one shape draw the same gates


def _cpu_gates(constraint: str, B: int, T: int, H: int, seed: int, dtype: torch.dtype) -> dict:
    """gates.make_gates on the CPU (drawn in float64 there, cast to dtype: the same values as drawing them for
    any device), remembered for the last few shapes: at 32k tokens x 16 heads the float64 draw takes ~0.2 s
    of CPU per point. Callers get copies (make_inputs), so the cached tensors never become leaves with grads."""
    key = (constraint, B, T, H, seed, dtype)
    hit = _GATE_DRAWS.get(key)
    if hit is None:
        hit = gates_mod.make_gates(constraint, B, T, H, seed=seed, device="cpu", dtype=dtype)
        _GATE_DRAWS[key] = hit
        while len(_GATE_DRAWS) > GATE_DRAWS_MAX:
            _GATE_DRAWS.popitem(last=False)
    else:
        _GATE_DRAWS.move_to_end(key)
    return hit


def _require_cuda(name: str, device: str) -> None:
    if device != "cuda":
        raise Unavailable(f"{name} runs on CUDA only")


def _no_overrides(op: BenchOp, variant: Variant) -> None:
    if variant.overrides():
        raise Unavailable(f"{op.name} takes no tile/warp/stage overrides ({variant.overrides()}); use auto")


def _with_config(op: BenchOp, fn: Callable, variant: Variant) -> dict:
    """Keyword arguments carrying the variant's tile/warp/stage overrides, if the op accepts a `config`."""
    ov = variant.overrides()
    if not ov:
        return {}
    if "config" in inspect.signature(fn).parameters:
        return {"config": dict(ov)}
    raise Unavailable(f"{op.name}: {getattr(fn, '__module__', '')}.{getattr(fn, '__name__', fn)} takes no "
                      f"tile/warp/stage overrides ({ov}); only auto can be swept")


# ----------------------------------------------------------------------------------------------- MDN family
_MDN_INPUTS = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")


class _MDNBase(BenchOp):
    reference_name = "mdn.ops.naive.naive_recurrent_momentum_delta_rule (float64)"

    def select(self, base):
        return {n: base[n] for n in _MDN_INPUTS}

    def reference(self, x):
        from mdn.ops.naive import naive_recurrent_momentum_delta_rule
        return naive_recurrent_momentum_delta_rule(**x, output_final_state=True)


class MDNChunk(_MDNBase):
    name = "mdn"
    summary = "MDN chunk op (mdn.ops.chunk_momentum_delta_rule)"
    impl_name = "mdn.ops.chunk_momentum_delta_rule"
    chunk_sizes = (16, 32, 64, 128)

    def load(self, variant, params):
        ops = importlib.import_module("mdn.ops")
        fn = getattr(ops, "chunk_momentum_delta_rule", None)
        if fn is None:
            if not params.get("allow_naive_fallback"):
                raise Unavailable("mdn.ops has no chunk_momentum_delta_rule yet (set allow_naive_fallback to "
                                  "time the plain-torch chunk form in its place)")
            fn = ops.naive_chunk_momentum_delta_rule
            self._fallback = True
        else:
            self._fallback = False
        self._config = _with_config(self, fn, variant)
        return fn

    def call(self, impl, x, variant):
        return impl(**x, output_final_state=True, chunk_size=variant.chunk_size, **self._config)

    def notes(self, variant, mode):
        if getattr(self, "_fallback", False):
            return ["FALLBACK: the Triton chunk op is missing; this row times naive_chunk_momentum_delta_rule"]
        return []

    @property
    def impl_label(self):
        return "mdn.ops.naive_chunk_momentum_delta_rule (fallback)" if getattr(self, "_fallback", False) else self.impl_name


class MDNRecurrent(_MDNBase):
    name = "mdn_recurrent"
    summary = "MDN fused recurrent op"
    impl_name = "mdn.ops.fused_recurrent_momentum_delta_rule"

    def load(self, variant, params):
        fn = getattr(importlib.import_module("mdn.ops"), "fused_recurrent_momentum_delta_rule", None)
        if fn is None:
            raise Unavailable("mdn.ops has no fused_recurrent_momentum_delta_rule")
        self._config = _with_config(self, fn, variant)
        return fn

    def call(self, impl, x, variant):
        return impl(**x, output_final_state=True, **self._config)


class MDNNaive(_MDNBase):
    name = "mdn_naive"
    summary = "MDN plain-torch chunk form (reference speed)"
    impl_name = "mdn.ops.naive_chunk_momentum_delta_rule"
    chunk_sizes = (16, 32, 64, 128)

    def load(self, variant, params):
        _no_overrides(self, variant)
        from mdn.ops.naive import naive_chunk_momentum_delta_rule
        return naive_chunk_momentum_delta_rule

    def call(self, impl, x, variant):
        return impl(**x, output_final_state=True, chunk_size=variant.chunk_size)


@contextlib.contextmanager
def _isolated_fla(path: str):
    """Import a second package called `fla` (the official MDN code ships its own fork) without clashing with fla
    from PyPI: the PyPI modules are set aside while it is imported and put back afterwards. The official
    functions keep references to their own modules."""
    saved = {n: m for n, m in sys.modules.items() if n == "fla" or n.startswith("fla.")}
    for n in saved:
        del sys.modules[n]
    sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.path.remove(path)
        for n in [n for n in sys.modules if n == "fla" or n.startswith("fla.")]:
            del sys.modules[n]
        sys.modules.update(saved)


class Official(_MDNBase):
    name = "official"
    summary = "official MDN Triton kernel (HuuYuLong/MomentumDeltaNet chunk_mode_rule, chunk 64)"
    impl_name = "official fla.ops.momentum_delta_rule.chunk_mode_rule"
    chunk_sizes = (64,)
    _fn = None

    def load(self, variant, params):
        _no_overrides(self, variant)
        path = params.get("official_path") or os.environ.get("MDN_OFFICIAL_PATH", "")
        if not path:
            raise Unavailable("no official MDN code configured (official_path or MDN_OFFICIAL_PATH: the folder "
                              "holding its fla package)")
        if not os.path.isdir(os.path.join(path, "fla", "ops", "momentum_delta_rule")):
            raise Unavailable(f"official_path={path!r} holds no fla/ops/momentum_delta_rule")
        _require_cuda(self.name, params.get("device", "cpu"))
        self._path = path
        if Official._fn is None:
            try:
                with _isolated_fla(path):
                    mod = importlib.import_module("fla.ops.momentum_delta_rule")
                    Official._fn = mod.chunk_mode_rule
            except Exception as exc:  # any failure to import the external code means it is unavailable here
                raise Unavailable(f"official MDN code at {path} does not import: {type(exc).__name__}: {exc}")
        return Official._fn

    def call(self, impl, x, variant):
        return impl(x["q"], x["k"], x["v"], x["log_alpha"], x["log_mu"], p=None, beta=x["beta"], eta=x["eta"],
                    output_final_state=True, use_qk_l2norm_in_kernel=True, use_p_times_alpha=True)


# ----------------------------------------------------------------------------------------------- fla baselines
def _import_fla(module: str, attr: str):
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # not installed, or broken on this device
        raise Unavailable(f"{module}.{attr} is not importable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def hopper_guard_bypassed() -> bool:
    """fla refuses its gated dq/dk backward (chunk_bwd_dqkwg) on Hopper with 3.4 <= Triton < 3.7.1 because a Triton
    bug may corrupt dk (fla #640). For timing, the guard is bypassed when it would fire; returns True if so.
    The correctness gate still checks every gradient (dk included) at the gate size."""
    try:
        co = importlib.import_module("fla.ops.common.chunk_o")
    except Exception:
        return False
    if getattr(co, "IS_NVIDIA_HOPPER", False) and getattr(co, "TRITON_ABOVE_3_4_0", False) \
            and not getattr(co, "TRITON_ABOVE_3_7_1", True):
        co.TRITON_ABOVE_3_7_1 = True
        _GUARD["bypassed"] = True
    return _GUARD["bypassed"]


_GUARD = {"bypassed": False}
GUARD_NOTE = ("fla Hopper guard bypassed (chunk_bwd_dqkwg refuses Triton 3.4-3.7.0 on Hopper, fla #640: dk may be "
              "wrong); timing is valid, dk passed the gate only at the gate size")


class _FLAOp(BenchOp):
    uses_guarded_bwd = False

    def _load(self, variant, params, module, attr):
        _no_overrides(self, variant)
        _require_cuda(self.name, params.get("device", "cpu"))
        fn = _import_fla(module, attr)
        if self.uses_guarded_bwd and params.get("mode") == "fwdbwd":
            hopper_guard_bypassed()
        return fn

    def cache_token(self):
        return super().cache_token() + (("hopper_guard_bypassed", _GUARD["bypassed"]),)

    def notes(self, variant, mode):
        if self.uses_guarded_bwd and mode == "fwdbwd" and _GUARD["bypassed"]:
            return [GUARD_NOTE]
        return []


class GDN(_FLAOp):
    name = "gdn"
    summary = "Gated DeltaNet (fla chunk_gated_delta_rule)"
    impl_name = "fla.ops.gated_delta_rule.chunk_gated_delta_rule"
    reference_name = "gated delta rule recurrence (float64)"
    chunk_sizes = (16, 32, 64)
    uses_guarded_bwd = True

    def load(self, variant, params):
        return self._load(variant, params, "fla.ops.gated_delta_rule", "chunk_gated_delta_rule")

    def select(self, base):
        return {"q": base["q"], "k": base["k"], "v": base["v"], "g": base["log_alpha"], "beta": base["beta"]}

    def call(self, impl, x, variant):
        return impl(x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=True, use_qk_l2norm_in_kernel=True,
                    chunk_size=variant.chunk_size)

    def reference(self, x):
        return references.gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"])


class KDA(_FLAOp):
    name = "kda"
    summary = "Kimi Delta Attention (fla chunk_kda)"
    impl_name = "fla.ops.kda.chunk_kda"
    reference_name = "KDA recurrence (float64)"
    chunk_sizes = (32, 64)

    def supports(self, variant, shape, device):
        super().supports(variant, shape, device)
        if shape.K > 256:
            raise Unavailable(f"fla chunk_kda supports K <= 256, not {shape.K}")

    def load(self, variant, params):
        return self._load(variant, params, "fla.ops.kda", "chunk_kda")

    def select(self, base):
        # a per-channel decay: the scalar log_alpha scaled by a fixed factor in [0.5, 1.5] per key channel
        la = base["log_alpha"]
        K = base["k"].shape[-1]
        gen = torch.Generator(device="cpu").manual_seed(12345)
        f = (0.5 + torch.rand(K, generator=gen, dtype=torch.float64)).to(device=la.device, dtype=la.dtype)
        return {"q": base["q"], "k": base["k"], "v": base["v"], "g": (la[..., None] * f).contiguous(),
                "beta": base["beta"]}

    def call(self, impl, x, variant):
        return impl(x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=True, use_qk_l2norm_in_kernel=True,
                    chunk_size=variant.chunk_size)

    def reference(self, x):
        return references.kda(x["q"], x["k"], x["v"], x["g"], x["beta"])


class SSD(_FLAOp):
    name = "ssd"
    summary = "Mamba2/SSD form (fla chunk_simple_gla, scalar decay per head)"
    impl_name = "fla.ops.simple_gla.chunk_simple_gla"
    reference_name = "simple GLA recurrence (float64)"
    chunk_sizes = (16, 32, 64, 128)
    uses_guarded_bwd = True

    def load(self, variant, params):
        return self._load(variant, params, "fla.ops.simple_gla", "chunk_simple_gla")

    def select(self, base):
        return {"q": base["q"], "k": base["k"], "v": base["v"], "g": base["log_alpha"]}

    def call(self, impl, x, variant):
        return impl(x["q"], x["k"], x["v"], g=x["g"], output_final_state=True, chunk_size=variant.chunk_size)

    def reference(self, x):
        return references.simple_gla(x["q"], x["k"], x["v"], x["g"])


# ----------------------------------------------------------------------------------------------- attention
class SDPA(BenchOp):
    name = "sdpa"
    summary = "softmax attention (torch SDPA; flash backend on CUDA)"
    impl_name = "torch.nn.functional.scaled_dot_product_attention"
    reference_name = "causal softmax attention (float64)"
    has_state = False

    def supports(self, variant, shape, device):
        if shape.K != shape.V:
            raise Unavailable(f"sdpa needs K == V (flash attention), got K={shape.K} V={shape.V}")
        if device == "cuda" and variant.dtype == "float32":
            raise Unavailable("sdpa's flash backend needs float16 or bfloat16")

    def load(self, variant, params):
        _no_overrides(self, variant)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.functional as F
        cuda = params.get("device") == "cuda"
        self._backend = "flash" if cuda else "default (CPU)"

        def sdpa(q, k, v):
            ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if cuda and q.dtype != torch.float64 else contextlib.nullcontext()
            with ctx:
                o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                   is_causal=True)
            return o.transpose(1, 2)
        return sdpa

    def select(self, base):
        return {"q": base["q"], "k": base["k"], "v": base["v"]}

    def call(self, impl, x, variant):
        return impl(x["q"], x["k"], x["v"]), None

    def reference(self, x):
        return references.causal_attention(x["q"], x["k"], x["v"])

    def notes(self, variant, mode):
        return [f"SDPA backend: {getattr(self, '_backend', '?')}; gates unused"]


OPS: dict[str, BenchOp] = {op.name: op for op in (MDNChunk(), MDNRecurrent(), MDNNaive(), Official(), GDN(), KDA(),
                                                    SSD(), SDPA())}


def get(name: str) -> BenchOp:
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"op={name!r}: expected one of {', '.join(OPS)}") from None
