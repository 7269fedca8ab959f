"""MDN learns MQAR: a test that can fail.

On an easy setting (64 tokens, 4 pairs, vocabulary 66: 32 keys, 33 values; chance 1/33) a one-layer MDN (trig
constraint, width 64) must get above 0.9 held-out accuracy within 300 steps on the CPU. It took 75-150 steps for
the 7 seeds tried while tuning (batch 64, lr 3e-3), so the budget has a 2x margin; the run stops early at 0.95
(about 30-45 s on two CPU cores). A broken mixer (wrong gates, no recall through the state, a bad backward)
stays near chance. The control shows the budget is not enough for a model without a token mixer.
This is the same configuration as the MDN point of sweeps/mqar-tiny.toml.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mdn.tasks.mqar import MQARConfig
from mdn.tasks.train_mqar import MQARTrainConfig, train_mqar

EASY = MQARConfig(vocab_size=66, seq_len=64, num_pairs=4, power_a=0.01, random_non_queries=False)
MDN = dict(arch="mdn", vocab_size=66, hidden_size=64, num_layers=1, num_heads=2, head_dim=32, gate_mode="trig")
BUDGET = MQARTrainConfig(lr=3e-3, batch_size=64, steps=300, warmup_steps=10, num_train=0, num_test=256,
                         eval_every=25, early_stop_accuracy=0.95, device="cpu", seed=0)


def test_mdn_learns_easy_mqar():
    curve = []
    res = train_mqar(MDN, EASY, BUDGET, on_metric=lambda m: curve.append((m["step"], round(m["accuracy"], 3))))
    assert res["status"] == "ok"
    assert res["accuracy"] > 0.9, f"MDN accuracy {res['accuracy']:.3f} after {res['steps']} steps: {curve}"


class TokenwiseMLP(nn.Module):
    """No token mixing: each position sees only its own token (it cannot know which value a key was paired with)."""

    def __init__(self, vocab: int, d: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)

    def hidden_states(self, ids):
        h = self.emb(ids)
        return h + self.mlp(h)

    def logits(self, h):
        return self.head(h)


def test_control_without_mixer_stays_near_chance():
    cfg = MQARTrainConfig(**{**BUDGET.__dict__, "steps": 100, "early_stop_accuracy": 0.0, "eval_every": 0})
    res = train_mqar({"vocab_size": 66}, EASY, cfg,
                     build=lambda mc, device, seed: (torch.manual_seed(seed), TokenwiseMLP(66))[1])
    assert res["accuracy"] < 0.15, res["accuracy"]
