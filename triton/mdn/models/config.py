"""Model configuration: one flat dataclass for every architecture (MDN, GDN, KDA, Mamba2, Transformer, hybrids)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..layers.gates import GATE_MODES
from ..layers.mlp import swiglu_intermediate_size

ARCHS = ("mdn", "gdn", "kda", "mamba2", "transformer")


@dataclass
class ModelConfig:
    """``arch`` names the mixer of every layer not listed in ``attn_layers`` (all layers are attention for
    ``transformer``). Field meanings follow spec §5.1/§6.1; sizes of the shipped configs are in configs/*.toml."""

    arch: str = "mdn"
    vocab_size: int = 50257
    hidden_size: int = 1024
    num_layers: int = 21
    # linear-attention mixers (mdn, gdn, kda); for mamba2, head_dim is the SSM head dim
    num_heads: int = 6
    head_dim: int = 128
    expand_v: float = 2.0
    conv_size: int = 4
    use_short_conv: bool = True
    use_output_gate: bool = True
    output_gate_act: str | None = None  # None: sigmoid for mdn (spec §6.1), swish for gdn (fla)
    mixer_impl: str = "auto"  # mdn: auto|chunk|fused_recurrent|torch|naive; gdn: auto|fla|reference|fla_layer
    chunk_size: int = 64
    # MDN only
    gate_mode: str = "trig"
    min_log_mu: float | None = -2.0
    tau_factor: float = 1.0
    use_output_correction: bool = True
    use_p_times_alpha: bool = True
    # Mamba2 (fla) only
    state_size: int = 128
    mamba_expand: int = 2
    n_groups: int = 1
    mamba_chunk_size: int = 256
    # blocks
    use_mlp: bool | None = None  # None: False for mamba2 (48 mixer-only blocks), True otherwise
    intermediate_size: int | None = None  # None: (8/3)·d rounded up to a multiple of 256
    norm_eps: float = 1e-6
    # attention layers (transformer, hybrids)
    attn_layers: list[int] = field(default_factory=list)
    attn_num_heads: int = 16
    attn_num_kv_heads: int | None = None
    rope_theta: float = 10000.0
    # embeddings and init
    tie_embeddings: bool = False
    initializer_range: float = 0.02
    rescale_residual: bool = True  # scale o_proj/down_proj init by 1/sqrt(residuals per layer * num_layers)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | "ModelConfig") -> "ModelConfig":
        if isinstance(d, ModelConfig):
            return dataclasses.replace(d)
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a dict, got {type(d).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"model.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
        kw = {}
        for k, v in d.items():
            kw[k] = _coerce(k, v, names[k])
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # derived ---------------------------------------------------------------------------------------------
    @property
    def mlp(self) -> bool:
        return (self.arch != "mamba2") if self.use_mlp is None else bool(self.use_mlp)

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or swiglu_intermediate_size(self.hidden_size)

    def is_attention_layer(self, i: int) -> bool:
        return self.arch == "transformer" or i in self.attn_layers

    def gate_act(self) -> str:
        if self.output_gate_act:
            return self.output_gate_act
        return "sigmoid" if self.arch == "mdn" else "swish"

    def validate(self) -> None:
        def bad(key, val, want):
            raise ValueError(f"model.{key} = {val!r}: expected {want}")

        if self.arch not in ARCHS:
            bad("arch", self.arch, "one of " + ", ".join(ARCHS))
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "conv_size",
                    "attn_num_heads", "chunk_size", "state_size", "mamba_expand", "n_groups", "mamba_chunk_size"):
            if getattr(self, key) < 1:
                bad(key, getattr(self, key), "an integer >= 1")
        if self.expand_v <= 0 or self.head_dim * self.expand_v != int(self.head_dim * self.expand_v):
            bad("expand_v", self.expand_v, "> 0 with head_dim * expand_v an integer")
        if self.gate_mode not in GATE_MODES:
            bad("gate_mode", self.gate_mode, "one of " + ", ".join(GATE_MODES))
        if self.tau_factor <= 0:
            bad("tau_factor", self.tau_factor, "> 0")
        if self.min_log_mu is not None and self.min_log_mu > 0:
            bad("min_log_mu", self.min_log_mu, "<= 0 (log of the momentum floor) or none")
        if self.norm_eps <= 0:
            bad("norm_eps", self.norm_eps, "> 0")
        if self.initializer_range <= 0:
            bad("initializer_range", self.initializer_range, "> 0")
        for i in self.attn_layers:
            if not 0 <= i < self.num_layers:
                bad("attn_layers", self.attn_layers, f"layer indices in [0, {self.num_layers})")
        if len(set(self.attn_layers)) != len(self.attn_layers):
            bad("attn_layers", self.attn_layers, "distinct layer indices")
        if self.arch == "transformer" or self.attn_layers:
            if self.hidden_size % self.attn_num_heads:
                bad("attn_num_heads", self.attn_num_heads, f"a divisor of hidden_size={self.hidden_size}")
            if (self.hidden_size // self.attn_num_heads) % 2:
                bad("attn_num_heads", self.attn_num_heads, "an even attention head dim (RoPE)")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            bad("intermediate_size", self.intermediate_size, "an integer >= 1")
        impls = {"mdn": ("auto", "chunk", "fused_recurrent", "torch", "naive"),
                 "gdn": ("auto", "fla", "reference", "fla_layer")}.get(self.arch, ("auto",))
        if self.mixer_impl not in impls:
            bad("mixer_impl", self.mixer_impl, f"one of {', '.join(impls)} for arch {self.arch}")
        if self.output_gate_act not in (None, "sigmoid", "swish", "silu"):
            bad("output_gate_act", self.output_gate_act, "sigmoid, swish or silu")


def _coerce(key: str, val: Any, f: dataclasses.Field) -> Any:
    """Light type checking of JSON/TOML values against the field's annotation."""
    t = str(f.type)
    if val is None or (isinstance(val, str) and val.lower() == "none" and "None" in t):
        if "None" not in t:
            raise ValueError(f"model.{key} = {val!r}: a value is required")
        return None
    if t.startswith("bool"):
        if not isinstance(val, bool):
            raise ValueError(f"model.{key} = {val!r}: expected true or false")
        return val
    if t.startswith("int"):
        if isinstance(val, bool) or not isinstance(val, int):
            if isinstance(val, float) and val.is_integer():
                return int(val)
            raise ValueError(f"model.{key} = {val!r}: expected an integer")
        return val
    if t.startswith("float"):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ValueError(f"model.{key} = {val!r}: expected a number")
        return float(val)
    if t.startswith("str"):
        if not isinstance(val, str):
            raise ValueError(f"model.{key} = {val!r}: expected a string")
        return val
    if t.startswith("list"):
        if not isinstance(val, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool)
                                                         for x in val):
            raise ValueError(f"model.{key} = {val!r}: expected a list of integers")
        return list(val)
    return val
