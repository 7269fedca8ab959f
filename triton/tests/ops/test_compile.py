"""chunk_momentum_delta_rule inside torch.compile(fullgraph=True): no graph break, same numbers as eager.

The scan is registered as torch custom ops (mdn::scan_fwd / mdn::scan_bwd) with fake implementations and an
autograd formula, so dynamo traces through the op and AOTAutograd builds the backward graph.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEV, make_inputs, needs_kernels, rel_rms
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule


class TinyMixer(torch.nn.Module):
    """A projection in front of the op and one behind it, so the compiled graph has real work on both sides."""

    def __init__(self, K: int, V: int):
        super().__init__()
        self.proj = torch.nn.Linear(K, K, bias=False)
        self.out = torch.nn.Linear(V, V, bias=False)

    def forward(self, q, k, v, log_alpha, beta, log_mu, eta, initial_state):
        o, ht = chunk_momentum_delta_rule(self.proj(q), k, v, log_alpha, beta, log_mu, eta,
                                          initial_state=initial_state, output_final_state=True, chunk_size=16)
        return self.out(o), ht


def _run(fn, inputs, do, dht):
    args = {n: t.detach().clone().requires_grad_(t.is_floating_point()) for n, t in inputs.items()}
    o, ht = fn(**args)
    ((o * do).sum() + (ht * dht).sum()).backward()
    return o.detach(), ht.detach(), {n: t.grad for n, t in args.items()}


def _check_compiled(backend):
    torch._dynamo.reset()
    B, T, H, K, V = 1, 37, 2, 16, 16
    inputs = make_inputs(B, T, H, K, V, device=DEV, initial_state=True)
    model = TinyMixer(K, V).to(DEV)
    do = torch.randn(B, T, H, V, device=DEV)
    dht = torch.randn(2, B, H, K, V, device=DEV)
    eo, eht, eg = _run(model, inputs, do, dht)
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: any graph break raises
    co, cht, cg = _run(compiled, inputs, do, dht)
    assert rel_rms(eo, co) <= 1e-5
    assert rel_rms(eht, cht) <= 1e-5
    for n in eg:
        assert cg[n] is not None, n
        assert rel_rms(eg[n], cg[n]) <= 1e-5, n
    assert model.proj.weight.grad is not None


@needs_kernels
def test_compile_fullgraph_aot_eager():
    _check_compiled("aot_eager")


@needs_kernels
def test_compile_fullgraph_with_the_triton_intra(monkeypatch):
    """MDN_INTRA=triton, pqk form: the Triton intra part is two more custom ops (mdn::intra_pqk_fwd/bwd)."""
    import mdn.ops.momentum_delta_rule.chunk_intra_bwd as bwd_mod
    import mdn.ops.momentum_delta_rule.chunk_intra_fwd as fwd_mod

    monkeypatch.setenv("MDN_INTRA", "triton")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    calls = []
    for mod, name in ((fwd_mod, "chunk_mdn_intra_pqk_fwd_triton"), (bwd_mod, "chunk_mdn_intra_pqk_bwd_triton")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    _check_compiled("aot_eager")
    assert "chunk_mdn_intra_pqk_fwd_triton" in calls and "chunk_mdn_intra_pqk_bwd_triton" in calls, calls


@needs_kernels
@pytest.mark.slow
def test_compile_fullgraph_inductor():
    _check_compiled("inductor")


def test_fake_tensor_shapes():
    """The fake implementations give the right shapes/dtypes without running a kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mdn.ops.momentum_delta_rule.chunk_scan import scan_fwd

    with FakeTensorMode():
        NC, H, C, K, V = 3, 2, 16, 8, 12
        u = torch.empty(NC, H, C, V, dtype=torch.bfloat16)
        kk = torch.empty(NC, H, C, K, dtype=torch.bfloat16)
        aqk = torch.empty(NC, H, C, C, dtype=torch.bfloat16)
        g = torch.empty(NC, H, 3)
        off = torch.empty(3, dtype=torch.int32)
        o, vt, ht = scan_fwd(u, kk, kk, kk, kk, aqk, kk, kk, g, None, off)
        assert o.shape == (NC, H, C, V) and o.dtype == torch.bfloat16
        assert vt.shape == (NC, H, C, V)
        assert ht.shape == (2, 2, H, K, V) and ht.dtype == torch.float32


def test_opcheck():
    """torch.library.opcheck: schema, fake tensor and autograd registration are consistent (torch fallback)."""
    from mdn.ops.momentum_delta_rule.chunk_scan import scan_fwd

    NC, H, C, K, V = 2, 1, 16, 8, 12
    mk = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
    u, y, z, qa, qb, ks, km = mk(NC, H, C, V), *(mk(NC, H, C, K) for _ in range(6))
    aqk = torch.randn(NC, H, C, C).tril().requires_grad_()
    g = torch.rand(NC, H, 3, requires_grad=True)
    h0 = torch.randn(2, 1, H, K, V, requires_grad=True)
    off = torch.tensor([0, 2], dtype=torch.int32)
    torch.library.opcheck(scan_fwd, (u, y, z, qa, qb, aqk, ks, km, g, h0, off),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def _intra_env(monkeypatch, value, backend="aot_eager"):
    import mdn.ops.momentum_delta_rule.chunk as chunk_mod
    monkeypatch.setenv("MDN_CHUNK_COMPILE", value)
    monkeypatch.setenv("MDN_CHUNK_COMPILE_BACKEND", backend)
    monkeypatch.setattr(chunk_mod, "_compiled_intra", {})
    monkeypatch.setattr(chunk_mod, "_compile_failed", False)
    return chunk_mod


def test_compile_intra_default_off_on_cpu(monkeypatch):
    chunk_mod = _intra_env(monkeypatch, "")
    monkeypatch.delenv("MDN_CHUNK_COMPILE")
    assert not chunk_mod._compile_wanted(torch.zeros(1))


@needs_kernels
def test_compiled_intra_matches_eager(monkeypatch):
    """MDN_CHUNK_COMPILE=1 forces the torch.compile'd intra part (here through aot_eager: the plumbing)."""
    chunk_mod = _intra_env(monkeypatch, "1")
    inputs = make_inputs(1, 37, 2, 16, 16, device=DEV, initial_state=True)
    do, dht = torch.randn(1, 37, 2, 16, device=DEV), torch.randn(2, 1, 2, 16, 16, device=DEV)
    fn = lambda **kw: chunk_momentum_delta_rule(**kw, output_final_state=True, chunk_size=16)  # noqa: E731
    co, cht, cg = _run(fn, inputs, do, dht)
    assert "dense" in chunk_mod._compiled_intra and not chunk_mod._compile_failed
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    eo, eht, eg = _run(fn, inputs, do, dht)
    assert rel_rms(eo, co) <= 1e-6 and rel_rms(eht, cht) <= 1e-6
    for n in eg:
        assert rel_rms(eg[n], cg[n]) <= 1e-6, n


@needs_kernels
def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A compiler failure warns once and the op continues (eager), with the same results."""
    chunk_mod = _intra_env(monkeypatch, "1")

    def broken(*a, **k):
        raise RuntimeError("simulated inductor failure")

    monkeypatch.setattr(chunk_mod, "_compiled_intra", {"dense": broken, "varlen": broken})
    inputs = make_inputs(1, 20, 1, 16, 16, device=DEV)
    with pytest.warns(RuntimeWarning, match="simulated inductor failure"):
        o1, _ = chunk_momentum_delta_rule(**inputs, chunk_size=16)
    assert chunk_mod._compile_failed
    o2, _ = chunk_momentum_delta_rule(**inputs, chunk_size=16)  # no second warning, eager from now on
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    o3, _ = chunk_momentum_delta_rule(**inputs, chunk_size=16)
    assert torch.equal(o1, o3) and torch.equal(o2, o3)


@needs_kernels
def test_compiled_intra_static_shapes(monkeypatch):
    """The dense intra compile is static: a new head shape gets its own graph instead of making K symbolic (with
    automatic dynamic shapes, K = 32 after K = 16 gave a graph that also covered K = 48), and more than dynamo's
    default 8 shapes per function still compile instead of silently falling back to eager."""
    from torch._dynamo.utils import counters
    _intra_env(monkeypatch, "1")

    def graphs_after(B, T, K):
        before = counters["stats"]["unique_graphs"]
        chunk_momentum_delta_rule(**make_inputs(B, T, 2, K, 16, device=DEV), chunk_size=16)
        return counters["stats"]["unique_graphs"] - before

    assert graphs_after(2, 37, 16) == 1
    assert graphs_after(2, 37, 16) == 0      # same shape: cached
    assert graphs_after(2, 41, 32) == 1      # a new K: its own graph
    assert graphs_after(2, 45, 48) == 1      # K static: K = 32's graph does not cover K = 48
    new = [graphs_after(1, T, 16) for T in (17, 18, 19, 20, 21, 22, 23, 24)]
    assert new == [1] * 8                    # shapes 5 to 12 of this function: still compiled


_GRAPHS: list = []  # (code name, symbolic?) of every graph the recording backend was given


def _symbolic(gm) -> bool:
    """Whether a dynamo graph takes symbolic sizes (automatic dynamic shapes) anywhere in its inputs."""
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        ev = n.meta.get("example_value")
        if isinstance(ev, torch.SymInt):
            return True
        if isinstance(ev, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in ev.shape):
            return True
    return False


def _recording_backend(gm, example_inputs):
    _GRAPHS.append(_symbolic(gm))
    return gm.forward


@needs_kernels
def test_compiled_parts_stay_static_across_dense_shapes(monkeypatch):
    """The op's own compiled parts (intra and the pqk backward's chain rule, MDN_CHUNK_COMPILE=1) compile dense
    batches with static shapes, one graph per shape: with automatic dynamic shapes a second shape in one process (an
    accuracy check before a timing, a sweep over shapes) made them symbolic and slower (docs/BENCHMARKS.md §1.14)."""
    from torch._dynamo.backends.registry import list_backends, register_backend
    from mdn.ops.momentum_delta_rule import chunk as ch
    from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
    if "mdn_test_recording" not in list_backends(exclude_tags=()):
        register_backend(_recording_backend, name="mdn_test_recording")
    torch._dynamo.reset()
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "1")
    monkeypatch.setenv("MDN_CHUNK_COMPILE_BACKEND", "mdn_test_recording")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    monkeypatch.setattr(ch, "_compiled_intra", {})
    monkeypatch.setattr(ch, "_compile_failed", False)
    monkeypatch.setattr(sp, "_compiled_chain", {})
    monkeypatch.setattr(sp, "_chain_compile_failed", False)
    _GRAPHS.clear()
    for B, T, H, K, V in [(1, 20, 2, 16, 16), (2, 40, 1, 32, 16), (1, 50, 3, 16, 32)]:
        args = {n: t.requires_grad_(t.is_floating_point()) for n, t in
                make_inputs(B, T, H, K, V, device=DEV).items()}
        o, _ = chunk_momentum_delta_rule(**args, chunk_size=16)
        o.sum().backward()
    assert not ch._compile_failed and not sp._chain_compile_failed
    assert set(sp._compiled_chain) == {True}
    assert len(_GRAPHS) >= 6 and not any(_GRAPHS), _GRAPHS  # forward, backward and chain graphs, all static
