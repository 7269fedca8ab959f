"""mdn/bench/profile_once.py (the one profiled fwd+bwd behind scripts/gpu_ncu.sh): its checks run before any work,
and the same steps run end to end (here on the CPU path: warm-up calls, then the one call, the gradients made)."""
import pytest
import torch

from mdn.bench import profile_once


def test_needs_a_gpu_or_checks_arguments(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profile_once.main(["--T", "64"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profile_once.main(["--T", "0"]) == 2
    assert "--T, --tokens must be >= 1 and --warmup >= 0, got 0, 32768, 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        profile_once.main(["--shape", "h1k1v1"])


def test_runs_the_calls_on_the_cpu_path(monkeypatch, capsys):
    import mdn.ops.momentum_delta_rule.chunk as chunk
    calls = []
    real = chunk.chunk_momentum_delta_rule

    def spy(*args, **kw):
        calls.append(kw["chunk_size"])
        return real(*args, **kw)

    monkeypatch.setattr(chunk, "chunk_momentum_delta_rule", spy)
    monkeypatch.setitem(profile_once.SHAPES, "tiny", (1, 16, 16))
    assert profile_once.main(["--shape", "tiny", "--T", "20", "--tokens", "20", "--warmup", "1", "--dtype", "fp32",
                              "--chunk-size", "16", "--device", "cpu"]) == 0
    assert calls == [16, 16]  # one warm-up call, then the profiled one
    assert "tiny B 1 T 20 fp32 C 16 fwd+bwd on cpu" in capsys.readouterr().out
