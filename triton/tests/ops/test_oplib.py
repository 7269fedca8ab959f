"""oplib.kernel_op (triton_op on a GPU, custom_op under the interpreter) and chunk.py's cached dense tables."""
from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from mdn.ops.momentum_delta_rule import chunk as ch
from mdn.ops.momentum_delta_rule import oplib
from mdn.ops.momentum_delta_rule.chunk_intra_qk import chunk_table
from mdn.ops.momentum_delta_rule.oplib import wrap_triton


def _probe(x, y, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y + i, tl.load(x + i, mask=i < n) * 2, mask=i < n)


_probe_kernel = JITFunction(_probe)  # a compiled-kernel object even when the suite runs under the interpreter


def _probe_body(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    wrap_triton(_probe_kernel)[(1,)](x, y, x.numel(), BLOCK=16)  # spelled so: see the first test
    return y


def _probe_fake(x):
    return torch.empty_like(x)


def test_kernel_op_off_the_interpreter_is_a_triton_op(monkeypatch):
    """Off the interpreter the op is a triton_op: torch finds its kernel in the body's source (the key of its
    compile caches; it only sees calls spelled wrap_triton(<kernel name>)) and traces the body as the fake."""
    monkeypatch.setattr(oplib, "interpreting", lambda: False)
    op = oplib.kernel_op("mdn_test::probe_triton", _probe_fake)(_probe_body)
    assert torch._library.triton.get_triton_kernels_for_op("mdn_test::probe_triton") == [_probe_kernel]
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        out = op(torch.empty(5, 3))
    assert out.shape == (5, 3)


def test_kernel_op_under_the_interpreter_is_a_custom_op(monkeypatch):
    monkeypatch.setattr(oplib, "interpreting", lambda: True)
    calls = []
    op = oplib.kernel_op("mdn_test::probe_custom", lambda x: calls.append(1) or torch.empty_like(x))(_probe_body)
    assert torch._library.triton.get_triton_kernels_for_op("mdn_test::probe_custom") == []
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        assert op(torch.empty(4)).shape == (4,)
    assert calls == [1]  # the given fake, not the body
    assert wrap_triton(_probe_kernel) is _probe_kernel


def test_dense_tables_cached_per_shape(monkeypatch):
    monkeypatch.setattr(ch, "_DENSE_TABLES", type(ch._DENSE_TABLES)())
    off, chunks = ch._dense_tables(3, 70, 32, torch.device("cpu"))
    assert off.tolist() == [0, 3, 6, 9] and off.dtype == torch.int32
    assert chunks.tolist() == chunk_table(3, 70, 32, "cpu").tolist()
    off2, chunks2 = ch._dense_tables(3, 70, 32, torch.device("cpu"))
    assert off2 is off and chunks2 is chunks
    off3, chunks3 = ch._dense_tables(3, 64, 32, torch.device("cpu"))
    assert off3.tolist() == [0, 2, 4, 6] and chunks3.tolist() == chunk_table(3, 64, 32, "cpu").tolist()


def test_dense_tables_bounded(monkeypatch):
    monkeypatch.setattr(ch, "_DENSE_TABLES", type(ch._DENSE_TABLES)())
    for T in range(1, ch._DENSE_TABLES_MAX + 10):
        ch._dense_tables(1, T, 16, torch.device("cpu"))
    assert len(ch._DENSE_TABLES) == ch._DENSE_TABLES_MAX
    assert (1, 1, 16, torch.device("cpu"), 0) not in ch._DENSE_TABLES  # the oldest went first


def _wrapped_kernel_names(fn) -> set:
    """Names n in calls spelled wrap_triton(n)(...) in fn's source: what torch reads to find a triton_op's kernels."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    return {c.args[0].id for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
            and c.func.id == "wrap_triton" and c.args and isinstance(c.args[0], ast.Name)}


def test_intra_op_bodies_launch_through_wrap_triton():
    """The CPU side of the GPU test below: every forward kernel of the three intra ops is launched as
    wrap_triton(<its module-level name>), the spelling torch's kernel finder reads (an attribute such as
    oplib.wrap_triton(k) is invisible to it, first test), and that name is the module's kernel."""
    from mdn.ops.momentum_delta_rule import chunk_intra_qk as cq, intra_gates as ig, tril_inverse as ti
    for mod, body, kernels in ((ig, ig.intra_gates_op._init_fn, {"momentum_delta_rule_fwd_kernel_intra_gates"}),
                               (cq, cq.intra_qk_op._init_fn, {"momentum_delta_rule_fwd_kernel_intra_qk"}),
                               (ti, ti.tril_inverse_triton, {"momentum_delta_rule_fwd_kernel_tril_inverse_blocks",
                                                             "momentum_delta_rule_fwd_kernel_tril_inverse"})):
        assert _wrapped_kernel_names(body) == kernels, mod.__name__
        assert all(hasattr(getattr(mod, k), "fn") for k in kernels)
    # the inverse's op body reaches its kernels through tril_inverse_triton, called by that name
    assert "tril_inverse_triton(" in inspect.getsource(ti.tril_inverse_op._init_fn)


@pytest.mark.gpu
@pytest.mark.skipif(oplib.interpreting() or not torch.cuda.is_available(), reason="needs CUDA, no interpreter")
def test_gpu_intra_ops_are_triton_ops():
    """The forward intra ops are triton_ops with their kernels found, so torch.compile launches them itself."""
    from mdn.ops.momentum_delta_rule import chunk_intra_qk as cq, intra_gates as ig, tril_inverse as ti
    for name, kernels in (("mdn::intra_gates", [ig.momentum_delta_rule_fwd_kernel_intra_gates]),
                          ("mdn::intra_qk", [cq.momentum_delta_rule_fwd_kernel_intra_qk]),
                          ("mdn::tril_inverse", [ti.momentum_delta_rule_fwd_kernel_tril_inverse_blocks,
                                                 ti.momentum_delta_rule_fwd_kernel_tril_inverse])):
        found = torch._library.triton.get_triton_kernels_for_op(name)
        assert all(any(f is k for f in found) for k in kernels), (name, found)
