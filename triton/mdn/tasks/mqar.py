"""MQAR: multi-query associative recall (Zoology; shared/docs/anchors.md §3.3), generated with torch.

One example of length L with N pairs (vocabulary V, keys from {1, …, V/2 − 1}, values from {V/2, …, V − 1}):

    position  0   1   2   3  …  2N−2 2N−1 | 2N … L−1
    input     k1  v1  k2  v2 …  kN   vN   | the N keys again, each at an even slot of the query region
    label     −100 everywhere except at the position of each queried key, whose label is its value

The query region (L − 2N positions) has S = (L − 2N)/2 even slots; the N keys take N distinct slots drawn
without replacement with probability ∝ i^(a−1) for slot i = 1 … S (a = ``power_a``; a = 0.01 favours short
gaps, like repeated bigrams in text). Every other position holds 0, or a uniform random token of the whole
vocabulary when ``random_non_queries``. Keys and values of one example are distinct. The labels are already
next-token targets aligned with the inputs: ``logits[:, t]`` is scored against ``labels[:, t]``; loss and
accuracy count only positions whose label is not ``IGNORE_INDEX``.

Everything is vectorised: draw-and-redraw picks N distinct keys/values (a uniform subset in a uniform order),
and a Gumbel top-k draws the slots (the same law as successive sampling without replacement, i.e. NumPy's
``choice(replace=False, p=...)``, which Zoology uses). Data is generated on the CPU from a seeded
``torch.Generator`` in blocks of ``_BLOCK`` rows, so a seed gives the same examples on every machine.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
_BLOCK = 2048  # rows drawn per block; part of what a seed means (changing it changes the data)


@dataclass(frozen=True)
class MQARConfig:
    vocab_size: int = 8192
    seq_len: int = 64
    num_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True

    def validate(self, prefix: str = "task") -> "MQARConfig":
        def bad(key, want):
            raise ValueError(f"{prefix}.{key} = {getattr(self, key)!r}: expected {want}")

        for key in ("vocab_size", "seq_len", "num_pairs"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(key, "an integer >= 1")
        if self.seq_len % 2:
            bad("seq_len", "an even length")
        if self.vocab_size <= self.seq_len:
            bad("vocab_size", f"> seq_len = {self.seq_len} (Zoology's condition)")
        if 4 * self.num_pairs > self.seq_len:
            bad("num_pairs", f"<= seq_len / 4 = {self.seq_len // 4} (N pairs of context plus N query slots)")
        if self.num_pairs > self.vocab_size // 2 - 1:
            bad("num_pairs", f"<= vocab_size / 2 - 1 = {self.vocab_size // 2 - 1} (distinct keys)")
        if isinstance(self.power_a, bool) or not isinstance(self.power_a, (int, float)) or not self.power_a > 0:
            bad("power_a", "a number > 0")
        if not isinstance(self.random_non_queries, bool):
            bad("random_non_queries", "true or false")
        return self

    @property
    def name(self) -> str:
        """Short split name, e.g. ``512x64`` (seq_len x num_pairs)."""
        return f"{self.seq_len}x{self.num_pairs}"

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "task") -> "MQARConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{prefix} must be an object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
        kw = dict(d)
        for key in ("vocab_size", "seq_len", "num_pairs"):
            if isinstance(kw.get(key), float) and kw[key].is_integer():
                kw[key] = int(kw[key])
        return cls(**kw).validate(prefix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def derive_seed(seed: int, *tags: Any) -> int:
    """A stable 63-bit seed from a base seed and tags (e.g. ``derive_seed(0, "test", "512x64")``)."""
    h = zlib.crc32(repr((int(seed),) + tuple(tags)).encode())
    return (int(seed) * 0x9E3779B1 + h) & ((1 << 63) - 1)


def _distinct(g: torch.Generator, rows: int, n: int, lo: int, hi: int) -> torch.Tensor:
    """[rows, n] int64: n distinct integers of [lo, hi) per row, a uniform subset in uniform order.

    Draw with replacement, redraw every repeat (all but the first occurrence of a value) until the row is
    distinct, then shuffle the row. The redraw rule looks only at which entries are equal, never at their
    values, so the law of the set is invariant under relabelling [lo, hi): a uniform n-subset. The shuffle
    makes the order uniform too. Costs O(rows * n) per round; the expected number of repeats is ~n^2 / 2(hi-lo).
    """
    x = torch.randint(lo, hi, (rows, n), generator=g)
    while n > 1:
        srt, idx = x.sort(dim=1, stable=True)  # equal values keep their position order
        rep = torch.zeros_like(x, dtype=torch.bool)
        rep.scatter_(1, idx[:, 1:], srt[:, 1:] == srt[:, :-1])  # later occurrences of a value
        if not bool(rep.any()):
            break
        x = torch.where(rep, torch.randint(lo, hi, (rows, n), generator=g), x)
    perm = torch.rand(rows, n, generator=g).argsort(dim=1)
    return x.gather(1, perm)


def _slots(g: torch.Generator, rows: int, n: int, space: int, power_a: float) -> torch.Tensor:
    """[rows, n] int64: n distinct slots of [0, space), drawn without replacement with p(i) ∝ (i+1)^(a-1)."""
    logp = (power_a - 1.0) * torch.arange(1, space + 1, dtype=torch.float64).log()  # [S]
    u = torch.rand(rows, space, generator=g, dtype=torch.float64).clamp_(min=1e-300)
    gumbel = -torch.log(-torch.log(u))  # [rows, S]
    return (logp[None, :] + gumbel).topk(n, dim=1).indices


def _block(cfg: MQARConfig, rows: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    V, L, N = cfg.vocab_size, cfg.seq_len, cfg.num_pairs
    half = V // 2
    keys = _distinct(g, rows, N, 1, half)  # [rows, N]
    values = _distinct(g, rows, N, half, V)  # [rows, N]
    slots = _slots(g, rows, N, (L - 2 * N) // 2, float(cfg.power_a))  # [rows, N]

    inputs = torch.zeros(rows, L, dtype=torch.long)
    labels = torch.full((rows, L), IGNORE_INDEX, dtype=torch.long)
    inputs[:, 0:2 * N:2] = keys
    inputs[:, 1:2 * N:2] = values
    qpos = 2 * N + 2 * slots  # [rows, N] position of each key's query
    inputs.scatter_(1, qpos, keys)
    labels.scatter_(1, qpos, values)
    if cfg.random_non_queries:
        noise = torch.randint(0, V, (rows, L), generator=g)
        filler = inputs == 0  # keys are never 0, so 0 marks exactly the filler positions
        inputs = torch.where(filler, noise, inputs)
    return inputs, labels


def mqar_batch(cfg: MQARConfig, num_examples: int, seed: int,
               device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_examples`` MQAR examples: (inputs [n, L] int64, labels [n, L] int64 with IGNORE_INDEX).

    Deterministic in (cfg, num_examples, seed); generated on the CPU, then moved to ``device``.
    """
    cfg.validate()
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples = {num_examples!r}: expected an integer >= 1")
    g = torch.Generator(device="cpu").manual_seed(int(seed) & ((1 << 63) - 1))
    ins, labs = [], []
    for start in range(0, num_examples, _BLOCK):
        i, lab = _block(cfg, min(_BLOCK, num_examples - start), g)
        ins.append(i)
        labs.append(lab)
    inputs, labels = torch.cat(ins), torch.cat(labs)
    if device is not None:
        inputs, labels = inputs.to(device), labels.to(device)
    return inputs, labels


def mqar_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions. logits [..., vocab] (any float dtype), labels [...]."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def mqar_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over labelled positions: argmax of the logits equals the label."""
    mask = labels != IGNORE_INDEX
    correct = (logits.argmax(-1) == labels) & mask
    return int(correct.sum()), int(mask.sum())


def chance_accuracy(cfg: MQARConfig) -> float:
    """Accuracy of guessing a uniformly random value token: 1 / (V - V/2)."""
    return 1.0 / (cfg.vocab_size - cfg.vocab_size // 2)


__all__ = ["IGNORE_INDEX", "MQARConfig", "chance_accuracy", "derive_seed", "mqar_accuracy", "mqar_batch",
           "mqar_loss"]
