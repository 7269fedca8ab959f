"""The MQAR generator (mdn.tasks.mqar) against the Zoology definition (shared/docs/anchors.md §3.3)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdn.tasks.mqar import IGNORE_INDEX, MQARConfig, chance_accuracy, derive_seed, mqar_accuracy, mqar_batch, mqar_loss


def _check_structure(cfg: MQARConfig, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    V, L, N = cfg.vocab_size, cfg.seq_len, cfg.num_pairs
    half = V // 2
    assert inputs.shape == labels.shape == (inputs.shape[0], L)
    assert inputs.dtype == labels.dtype == torch.long
    keys, values = inputs[:, 0:2 * N:2], inputs[:, 1:2 * N:2]
    assert bool(((keys >= 1) & (keys < half)).all()), "keys come from {1, ..., V/2 - 1}"
    assert bool(((values >= half) & (values < V)).all()), "values come from {V/2, ..., V - 1}"
    for row in range(inputs.shape[0]):
        assert len(set(keys[row].tolist())) == N, "keys of one example are distinct"
        assert len(set(values[row].tolist())) == N, "values of one example are distinct"
    assert bool((labels[:, :2 * N] == IGNORE_INDEX).all()), "no label inside the context"
    mask = labels != IGNORE_INDEX
    assert bool((mask.sum(1) == N).all()), "exactly one labelled query per pair"
    qpos = mask.nonzero()
    assert bool(((qpos[:, 1] - 2 * N) % 2 == 0).all()), "queries sit at even offsets of the query region"
    for row in range(inputs.shape[0]):
        pairs = dict(zip(keys[row].tolist(), values[row].tolist()))
        pos = mask[row].nonzero().flatten()
        queried = inputs[row, pos].tolist()
        assert sorted(queried) == sorted(pairs), "every key is queried exactly once"
        assert labels[row, pos].tolist() == [pairs[k] for k in queried], "the label of a query is its key's value"


@pytest.mark.parametrize("V,L,N", [(32, 16, 2), (128, 64, 4), (8192, 128, 8), (8192, 512, 64), (8192, 1024, 256)])
def test_structure_without_random_fill(V, L, N):
    cfg = MQARConfig(vocab_size=V, seq_len=L, num_pairs=N, random_non_queries=False)
    inputs, labels = mqar_batch(cfg, 64, seed=3)
    _check_structure(cfg, inputs, labels)
    mask = labels != IGNORE_INDEX
    filler = ~mask
    filler[:, :2 * N] = False
    assert bool((inputs[filler] == 0).all()), "non-query positions hold 0 without random fill"


def test_random_non_queries_fill_only_the_filler():
    base = MQARConfig(vocab_size=256, seq_len=64, num_pairs=4, random_non_queries=False)
    rnd = MQARConfig(vocab_size=256, seq_len=64, num_pairs=4, random_non_queries=True)
    i0, l0 = mqar_batch(base, 128, seed=5)
    i1, l1 = mqar_batch(rnd, 128, seed=5)
    _check_structure(rnd, i1, l1)
    assert torch.equal(l0, l1), "the random fill is drawn after keys, values and slots: same labels"
    keep = (i0 != 0)
    assert torch.equal(i0[keep], i1[keep]), "context and queries are unchanged by the fill"
    fill = i1[~keep]
    assert fill.numel() > 0 and int(fill.max()) < 256 and len(set(fill.tolist())) > 100, "fill is uniform noise"


def test_deterministic_and_seed_sensitive():
    cfg = MQARConfig(vocab_size=8192, seq_len=256, num_pairs=16)
    a = mqar_batch(cfg, 300, seed=11)
    b = mqar_batch(cfg, 300, seed=11)
    c = mqar_batch(cfg, 300, seed=12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert derive_seed(0, "test", "64x4") != derive_seed(0, "train", "64x4")
    assert derive_seed(0, "test", "64x4") == derive_seed(0, "test", "64x4")


def test_blocks_are_independent_draws():
    """More rows than one generation block: the second block is not a copy of the first."""
    from mdn.tasks import mqar

    cfg = MQARConfig(vocab_size=128, seq_len=16, num_pairs=2)
    inputs, _ = mqar_batch(cfg, mqar._BLOCK + 10, seed=0)
    assert not torch.equal(inputs[:10], inputs[mqar._BLOCK:mqar._BLOCK + 10])


def test_keys_and_values_are_uniform():
    """Chi-square style check: every key/value token is equally likely, and key->value pairing is unbiased."""
    cfg = MQARConfig(vocab_size=40, seq_len=32, num_pairs=8)
    inputs, _ = mqar_batch(cfg, 20000, seed=1)
    keys, values = inputs[:, 0:16:2], inputs[:, 1:16:2]
    kc = torch.bincount(keys.flatten(), minlength=40)[1:20].double()  # 19 key tokens
    vc = torch.bincount(values.flatten(), minlength=40)[20:40].double()  # 20 value tokens
    for counts in (kc, vc):
        expect = counts.sum() / counts.numel()
        chi2 = float(((counts - expect) ** 2 / expect).sum())
        assert chi2 < 3 * counts.numel(), f"token counts far from uniform (chi2 {chi2:.1f})"
    # the first pair's key is not correlated with its value (a biased order would pair small with small)
    corr = np.corrcoef(keys[:, 0].double().numpy(), values[:, 0].double().numpy())[0, 1]
    assert abs(corr) < 0.03
    # the first key is uniform over keys too (uniform order, not just a uniform set)
    first = torch.bincount(keys[:, 0], minlength=20)[1:20].double()
    expect = first.sum() / 19
    assert float(((first - expect) ** 2 / expect).sum()) < 3 * 19


def _successive_sampling_probs(space: int, a: float) -> np.ndarray:
    """P(slot i is taken) for 2 draws without replacement with p ∝ (i+1)^(a-1) (NumPy's choice)."""
    p = np.arange(1, space + 1, dtype=np.float64) ** (a - 1)
    p /= p.sum()
    taken = p.copy()
    for j in range(space):  # second draw given the first was j
        q = p.copy()
        q[j] = 0
        taken += p[j] * q / q.sum()
    return taken


@pytest.mark.parametrize("power_a", [0.01, 0.5, 1.0])
def test_query_gaps_follow_the_power_law(power_a):
    L, N = 24, 2  # 10 slots, 2 queries
    cfg = MQARConfig(vocab_size=64, seq_len=L, num_pairs=N, power_a=power_a, random_non_queries=False)
    _, labels = mqar_batch(cfg, 40000, seed=2)
    slots = ((labels != IGNORE_INDEX).nonzero()[:, 1] - 2 * N) // 2
    freq = torch.bincount(slots, minlength=10).double().numpy() / 40000
    want = _successive_sampling_probs(10, power_a)
    assert np.allclose(freq, want, atol=0.012), (freq.round(3), want.round(3))


def test_all_slots_used_when_the_query_region_is_full():
    cfg = MQARConfig(vocab_size=8192, seq_len=1024, num_pairs=256, random_non_queries=False)
    inputs, labels = mqar_batch(cfg, 4, seed=0)
    assert bool((labels[:, 512::2] != IGNORE_INDEX).all())


@pytest.mark.parametrize("kw,msg", [
    (dict(seq_len=15), "task.seq_len = 15: expected an even length"),
    (dict(vocab_size=64, seq_len=64), "task.vocab_size = 64: expected > seq_len"),
    (dict(num_pairs=17, seq_len=64), "task.num_pairs = 17: expected <= seq_len / 4"),
    (dict(vocab_size=66, seq_len=64, num_pairs=16), None),
    (dict(power_a=0.0), "task.power_a = 0.0"),
    (dict(num_pairs=0), "task.num_pairs = 0: expected an integer >= 1"),
    (dict(random_non_queries="yes"), "task.random_non_queries"),
])
def test_validation(kw, msg):
    cfg = MQARConfig(**{**dict(vocab_size=128, seq_len=64, num_pairs=4), **kw})
    if msg is None:
        cfg.validate()
        return
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        cfg.validate()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="mqar.pairs: unknown key"):
        MQARConfig.from_dict({"pairs": 4}, prefix="mqar")
    assert MQARConfig.from_dict({"seq_len": 64.0, "num_pairs": 4}).seq_len == 64


def test_loss_and_accuracy_count_only_query_positions():
    cfg = MQARConfig(vocab_size=64, seq_len=32, num_pairs=4)
    inputs, labels = mqar_batch(cfg, 8, seed=0)
    logits = torch.full((8, 32, 64), -10.0)
    mask = labels != IGNORE_INDEX
    logits[mask, labels[mask]] = 10.0  # right at every query
    logits[~mask, 0] = 50.0  # whatever happens elsewhere must not matter
    correct, total = mqar_accuracy(logits, labels)
    assert (correct, total) == (32, 32)
    assert float(mqar_loss(logits, labels)) < 1e-6
    wrong = logits.clone()
    wrong[mask] = 0.0  # uniform at the queries
    assert math.isclose(float(mqar_loss(wrong, labels)), math.log(64), rel_tol=1e-5)
    assert mqar_accuracy(wrong, labels)[0] <= 32
    assert chance_accuracy(cfg) == 1 / 32
