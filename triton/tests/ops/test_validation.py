"""Every ValueError of check_inputs, and that the ops raise it before running anything."""
import math

import pytest
import torch

from conftest import make_inputs
from mdn.ops.momentum_delta_rule.naive import naive_chunk_momentum_delta_rule, naive_recurrent_momentum_delta_rule
from mdn.ops.momentum_delta_rule.validation import check_inputs
from mdn.ops import fused_recurrent_momentum_delta_rule

B, T, H, K, V = 2, 5, 3, 4, 6
ARGS = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")


def _good(**kw):
    x = make_inputs(B, T, H, K, V, initial_state=True, **kw)
    x.setdefault("cu_seqlens", None)
    return x


def _call(x, **kw):
    return check_inputs(*(x[n] for n in ARGS), x.get("scale"), x.get("initial_state"), x.get("cu_seqlens"), **kw)


def _varlen():
    x = make_inputs(1, 9, H, K, V, initial_state=True, lengths=[1, 0, 8])
    return x


def test_valid_inputs_return_n_and_scale():
    assert _call(_good()) == (B, K ** -0.5)
    x = _good()
    x["scale"] = 0.25
    assert _call(x) == (B, 0.25)
    x = _varlen()
    assert _call(x) == (3, K ** -0.5)
    assert _call(x, chunk_size=32)[0] == 3
    x64 = _good(dtype=torch.float64)
    assert _call(x64, allow_fp64=True)[0] == B


def _mut(name, fn):
    return pytest.param(fn, id=name)


def _set(**updates):
    def f(x):
        x.update(updates)
        return x
    return f


def _reshape(name, shape):
    def f(x):
        x[name] = torch.randn(*shape)
        return x
    return f


def _cast(name, dtype):
    def f(x):
        x[name] = x[name].to(dtype)
        return x
    return f


def _cu(values, dtype=torch.int32):
    def f(x):
        x = _varlen()
        x["cu_seqlens"] = torch.tensor(values, dtype=dtype)
        return x
    return f


def _meta(name):
    def f(x):
        x[name] = x[name].to("meta")
        return x
    return f


CASES = [
    # (mutation, words that must appear in the message)
    (_set(q=None), ["q", "NoneType", "[B, T, H, K]"]),
    (_reshape("q", (B, T, H * K)), ["q", "rank 4", "[2, 5, 12]"]),
    (_reshape("k", (B, T, H)), ["k", "rank 4", "[2, 5, 3]"]),
    (_reshape("v", (B, T, H, V, 1)), ["v", "rank 4"]),
    (_reshape("k", (B, T, H, K + 1)), ["k", "shape of q", "[2, 5, 3, 4]", "[2, 5, 3, 5]"]),
    (_reshape("v", (B, T + 1, H, V)), ["v", "T=5", "[2, 6, 3, 6]"]),
    (_reshape("v", (B, T, H, 0)), ["v", "V >= 1", "V=0"]),
    (lambda x: dict(x, q=torch.randn(B, T, H, 300), k=torch.randn(B, T, H, 300)), ["q", "K=300", "[1, 256]"]),
    (lambda x: dict(x, q=torch.randn(B, 0, H, K), k=torch.randn(B, 0, H, K), v=torch.randn(B, 0, H, V)),
     ["q", "B, T, H >= 1", "[2, 0, 3, 4]"]),
    (_cast("q", torch.float64), ["q", "float64", "float32, float16, bfloat16"]),
    (_cast("v", torch.int64), ["v", "int64"]),
    (lambda x: dict(x, k=x["k"].half(), v=x["v"].half()), ["k, v", "dtype of q", "float32", "float16"]),
    (_cast("eta", torch.int32), ["eta", "int32"]),
    (_reshape("log_alpha", (B, T)), ["log_alpha", "rank 3", "[B=2, T=5, H=3]"]),
    (_reshape("beta", (B, T, H + 1)), ["beta", "[B=2, T=5, H=3]", "[2, 5, 4]"]),
    (_reshape("log_mu", (B, T + 1, H)), ["log_mu", "[2, 6, 3]"]),
    (_set(eta=None), ["eta", "NoneType"]),
    (_meta("v"), ["v", "device", "meta"]),
    (_meta("log_mu"), ["log_mu", "device", "meta"]),
    (_meta("initial_state"), ["initial_state", "device", "meta"]),
    (_set(scale=0.0), ["scale", "> 0", "0.0"]),
    (_set(scale=-1.0), ["scale", "-1.0"]),
    (_set(scale=math.inf), ["scale", "inf"]),
    (_set(scale=math.nan), ["scale", "nan"]),
    (_set(scale="big"), ["scale", "'big'"]),
    (_set(scale=True), ["scale", "True"]),
    (_reshape("initial_state", (2, B, H, K)), ["initial_state", "rank 5", "[2, N=2, H=3, K=4, V=6]"]),
    (_reshape("initial_state", (2, B + 1, H, K, V)), ["initial_state", "N=2", "[2, 3, 3, 4, 6]"]),
    (_reshape("initial_state", (1, B, H, K, V)), ["initial_state", "[1, 2, 3, 4, 6]"]),
    (lambda x: dict(x, initial_state=torch.zeros(2, B, H, K, V, dtype=torch.int32)), ["initial_state", "int32"]),
    (lambda x: dict(x, cu_seqlens=[0, 2, 5]), ["cu_seqlens", "list"]),
    (lambda x: dict(x, cu_seqlens=torch.tensor([0, 2, 5])), ["q", "B=1", "B=2"]),
    (_cu([[0, 9]]), ["cu_seqlens", "1-D", "[1, 2]"]),
    (_cu([0]), ["cu_seqlens", "N >= 1", "[1]"]),
    (_cu([0.0, 1.0, 9.0], torch.float32), ["cu_seqlens", "float32", "int32, int64"]),
    (_cu([1, 1, 9]), ["cu_seqlens", "start at 0", "cu_seqlens[0]=1"]),
    (_cu([0, 5, 4, 9]), ["cu_seqlens", "non-decreasing", "cu_seqlens[1]=5", "cu_seqlens[2]=4"]),
    (_cu([0, 1, 8]), ["cu_seqlens", "end at T=9", "cu_seqlens[-1]=8"]),
    (_cu([0, 1, 10]), ["cu_seqlens", "T=9", "10"]),
]


@pytest.mark.parametrize("mutate,words", CASES)
def test_check_inputs_errors(mutate, words):
    x = mutate(_good())
    with pytest.raises(ValueError) as e:
        _call(x)
    msg = str(e.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_varlen_state_must_have_n_sequences():
    x = _varlen()
    x["initial_state"] = torch.randn(2, 1, H, K, V)
    with pytest.raises(ValueError, match=r"initial_state: expected shape \[2, N=3"):
        _call(x)


def test_cu_seqlens_device():
    x = _varlen()
    x["cu_seqlens"] = x["cu_seqlens"].to("meta")
    with pytest.raises(ValueError, match="cu_seqlens: expected device cpu"):
        _call(x)


def test_check_values_false_skips_reading_cu_seqlens():
    x = _varlen()
    x["cu_seqlens"] = torch.tensor([1, 1, 1, 7], dtype=torch.int32)
    assert _call(x, check_values=False)[0] == 3


@pytest.mark.parametrize("chunk_size", [0, 8, 48, 256, 64.0, True, "64", None])
def test_chunk_size(chunk_size):
    x = _good()
    if chunk_size is None:
        assert _call(x, chunk_size=None)[0] == B
        return
    with pytest.raises(ValueError, match=r"chunk_size: expected one of \(16, 32, 64, 128\), got"):
        _call(x, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [16, 32, 64, 128])
def test_chunk_sizes_accepted(chunk_size):
    assert _call(_good(), chunk_size=chunk_size)[0] == B


def test_max_k():
    x = _good()
    with pytest.raises(ValueError, match=r"K in \[1, 2\], got K=4"):
        _call(x, max_k=2)


def test_fp64_only_for_references():
    x = _good(dtype=torch.float64)
    with pytest.raises(ValueError, match="q: expected dtype"):
        _call(x)
    _call(x, allow_fp64=True)


def test_initial_state_any_float_dtype():
    x = _good()
    for dt in (torch.float64, torch.bfloat16, torch.float16):
        x["initial_state"] = x["initial_state"].to(dt)
        assert _call(x)[0] == B


def test_scale_tensor_is_accepted():
    x = _good()
    x["scale"] = torch.tensor(0.5)
    assert _call(x)[1] == 0.5


@pytest.mark.parametrize("op", [naive_recurrent_momentum_delta_rule, naive_chunk_momentum_delta_rule,
                                fused_recurrent_momentum_delta_rule])
def test_ops_validate_before_running(op):
    x = _good()
    x["k"] = torch.randn(B, T, H, K + 1)
    del x["cu_seqlens"]
    with pytest.raises(ValueError, match="k: expected the shape of q"):
        op(**x)
    x = _varlen()
    x["cu_seqlens"] = torch.tensor([0, 1, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens: expected to end at T=9"):
        op(**x)


def test_naive_chunk_checks_chunk_size():
    x = _good()
    del x["cu_seqlens"]
    with pytest.raises(ValueError, match="chunk_size"):
        naive_chunk_momentum_delta_rule(**x, chunk_size=24)


def test_fused_recurrent_rejects_fp64():
    x = _good(dtype=torch.float64)
    del x["cu_seqlens"]
    with pytest.raises(ValueError, match="q: expected dtype in"):
        fused_recurrent_momentum_delta_rule(**x)


def test_env_choice_default_and_error(monkeypatch):
    """Every op knob reads through knobs.env_choice: unset or empty is the default, anything else outside the
    choices is a ValueError naming the variable, the value, the choices and the default."""
    from mdn.ops.momentum_delta_rule.knobs import env_choice

    monkeypatch.delenv("MDN_TEST_KNOB", raising=False)
    assert env_choice("MDN_TEST_KNOB", ("a", "b"), "a") == "a"
    monkeypatch.setenv("MDN_TEST_KNOB", "")
    assert env_choice("MDN_TEST_KNOB", ("a", "b"), "b") == "b"
    monkeypatch.setenv("MDN_TEST_KNOB", "b")
    assert env_choice("MDN_TEST_KNOB", ("a", "b"), "a") == "b"
    monkeypatch.setenv("MDN_TEST_KNOB", "c")
    with pytest.raises(ValueError, match=r"MDN_TEST_KNOB='c': expected one of 'a', 'b' \(default 'a'\)"):
        env_choice("MDN_TEST_KNOB", ("a", "b"), "a")
