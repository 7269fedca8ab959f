"""bench_gates.py's float64 reference agrees with the shipped gate kernels (on the GPU, or on the CPU under
TRITON_INTERPRET=1), so that the errors it prints measure the kernels and not a mismatched reference."""
import torch
from conftest import DEV, needs_kernels

from mdn.bench import bench_gates as bg
from mdn.bench.check import rel_rms
from mdn.ops.momentum_delta_rule import intra_gates as ig


@needs_kernels
def test_reference_matches_the_kernels():
    rows, C = 3, 64
    la, be, lm, grads = bg.inputs(rows, C, DEV)
    ref_out, ref_grad = bg.reference(la, be, lm, grads)
    nan = lambda *shape: torch.full(shape, float("nan"), device=DEV)  # noqa: E731
    outs = [nan(rows, C) for _ in range(4)] + [nan(rows, C, C)]
    gout = [nan(rows, C) for _ in range(3)]
    ig.momentum_delta_rule_fwd_kernel_intra_gates[(rows,)](la, be, lm, *outs, C=C, PREC="tf32",
                                                           num_warps=ig.GATE_WARPS["fwd"])
    ig.momentum_delta_rule_bwd_kernel_intra_gates[(rows,)](la, be, lm, *grads[:4], grads[4], *gout, C=C, PREC="tf32",
                                                           num_warps=ig.GATE_WARPS["bwd"])
    for ref, got in zip(ref_out + list(ref_grad), outs + gout):
        assert rel_rms(ref, got) < (2e-3 if DEV == "cuda" else 1e-5)  # TF32 on a GPU
    # a wrong upstream gradient would show: the reference is not blind to its inputs
    assert rel_rms(ref_grad[0], gout[1]) > 1e-1


def test_emit_rows_tags_prints_and_appends(tmp_path, monkeypatch, capsys):
    import json

    from mdn.bench.timing import emit_rows
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    out = tmp_path / "rows.jsonl"
    out.write_text('{"old": 1}\n')
    emit_rows([{"part": "fwd", "ms": 0.5}, {"part": "bwd", "ms": 1.5}], str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"old": 1}
    assert [r["part"] for r in lines[1:]] == ["fwd", "bwd"] and all(r["device"] == "Fake GPU" for r in lines[1:])
    assert capsys.readouterr().out.count('"device": "Fake GPU"') == 2
