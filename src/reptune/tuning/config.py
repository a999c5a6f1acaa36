"""Tuning configuration: one dataclass, named presets, JSON round trip.

``loss = w_tok * token_loss + w_rep * representation_loss + w_retain * retain_loss``

Presets (named as in the Representation Tuning paper):

============  =====================================================================
``truth``     token loss only, target = the correct answer letter
``lie``       token loss only, target = the wrong answer letter
``honesty``   tune in ``+v`` (``(1-cos)/2``) + truth token loss / 100
``dishonesty`` tune in ``-v`` + lie token loss / 100
``tune-out``  remove ``v`` (``|cos|``), no token loss
``pos``       tune in ``+v`` only
``neg``       tune in ``-v`` only
============  =====================================================================

Every field can be overridden (``TuneConfig.from_preset("honesty", lr=1e-5)``, or CLI flags).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from reptune.errors import ReptuneError

REP_MODES = ("in", "out", "none")
TOKEN_TARGETS = ("truth", "lie", "soft", "sft", "none")
RETAIN_MODES = ("none", "kl", "act", "both")


@dataclass
class ParamGroup:
    """Parameters (inside the trained blocks) whose name matches ``pattern`` get learning rate ``lr``."""

    pattern: str
    lr: float


@dataclass
class TuneConfig:
    """Everything that defines a tuning run; saved as ``tune_config.json`` beside the weights.

    Attributes:
        preset: the preset this config started from (informational).
        layers: trained decoder blocks (layer spec, see :mod:`reptune.sites`).
        rep_layers: layers whose output the representation loss reads; ``None`` = the trained
            layers the vector has.
        rep_mode: ``in`` (pull toward ``rep_sign * v``), ``out`` (remove ``v``), ``none``.
        rep_sign: +1 or -1 (tune in ``+v`` or ``-v``).
        rep_positions: ``last`` (last prompt token), ``last:N``, ``all`` (prompt tokens),
            ``generated`` (answer/completion tokens).
        token_target: ``truth`` / ``lie`` (answer letter), ``soft`` (50/50 over the two
            letters), ``sft`` (completion tokens), ``none``.
        retain: ``none``, ``kl`` (KL(base || tuned) of next-token distributions on a retain
            corpus), ``act`` (L2 to frozen activations at the trained layers), ``both``.
        param_groups: per-pattern learning rates inside the trained blocks; first match wins,
            other parameters of the trained blocks use ``lr``.
        train_modules: regex; only parameters of the trained blocks whose name matches train.
        lora: train LoRA adapters (peft) instead of the weights; ``lora_targets`` is a regex
            over module names inside the trained blocks.
    """

    preset: str = "custom"
    layers: str = "middle"
    rep_layers: str | None = None
    rep_mode: str = "in"
    rep_sign: int = 1
    rep_positions: str = "last"
    token_target: str = "truth"
    w_tok: float = 1.0
    w_rep: float = 1.0
    w_retain: float = 0.0
    retain: str = "none"
    retain_data: str | None = None
    retain_topk: int = 64
    lr: float = 5e-5
    param_groups: list[ParamGroup] = field(default_factory=list)
    train_modules: str = ".*"
    weight_decay: float = 0.0
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: str = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc|dense|query_key_value|fc1|fc2)"
    steps: int = 100
    batch_size: int = 8
    val_fraction: float = 0.1
    eval_every: int = 10
    patience: int = 5
    checkpoint_every: int = 20
    max_grad_norm: float = 1.0
    seed: int = 0
    autocast: str | None = "bf16"
    limit: int | None = None

    def __post_init__(self) -> None:
        self.param_groups = [group if isinstance(group, ParamGroup) else ParamGroup(**group) for group in self.param_groups]
        self.validate()

    def validate(self) -> None:
        """Raise ReptuneError on any inconsistent setting (before any model work).

        Every number must be finite (a NaN or infinite learning rate or weight would only show up
        as a diverged loss at step 1); learning rates lie in (0, 1].
        """
        numbers = {"lr": self.lr, "w_tok": self.w_tok, "w_rep": self.w_rep, "w_retain": self.w_retain, "weight_decay": self.weight_decay,
                   "max_grad_norm": self.max_grad_norm, "val_fraction": self.val_fraction, **{f"param_groups[{i}].lr": g.lr for i, g in enumerate(self.param_groups)}}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ReptuneError(f"{name} must be a finite number, got {value!r}")
        checks = [
            (self.rep_mode in REP_MODES, f"rep_mode must be one of {REP_MODES}"),
            (self.rep_sign in (1, -1), "rep_sign must be 1 or -1"),
            (self.token_target in TOKEN_TARGETS, f"token_target must be one of {TOKEN_TARGETS}"),
            (self.retain in RETAIN_MODES, f"retain must be one of {RETAIN_MODES}"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.eval_every >= 1 and self.checkpoint_every >= 1, "eval_every and checkpoint_every must be at least 1"),
            (self.patience >= 1, "patience must be at least 1"),
            (0 < self.lr <= 1 and all(0 < group.lr <= 1 for group in self.param_groups), "learning rates must be in (0, 1]"),
            (self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be non-negative"),
            (min(self.w_tok, self.w_rep, self.w_retain) >= 0, "loss weights must be non-negative"),
            (self.w_tok > 0 or self.w_rep > 0, "at least one of w_tok and w_rep must be positive"),
            (self.lora_rank >= 1, "lora_rank must be at least 1"),
            (self.limit is None or self.limit >= 1, "limit must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ReptuneError(message)
        if self.retain != "none" and self.w_retain == 0:
            self.w_retain = 1.0

    @property
    def uses_vector(self) -> bool:
        return self.rep_mode != "none" and self.w_rep > 0

    @property
    def uses_tokens(self) -> bool:
        return self.token_target != "none" and self.w_tok > 0

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TuneConfig:
        """A named preset with field overrides (``None`` values are ignored)."""
        if name not in PRESETS:
            raise ReptuneError(f"unknown preset {name!r}: choose {', '.join(PRESETS)}")
        values = {**PRESETS[name], "preset": name}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ReptuneError(f"unknown tuning option(s): {', '.join(sorted(unknown))}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TuneConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ReptuneError(f"unknown tuning option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


PRESETS: dict[str, dict[str, Any]] = {
    "truth": {"rep_mode": "none", "w_rep": 0.0, "token_target": "truth", "w_tok": 1.0},
    "lie": {"rep_mode": "none", "w_rep": 0.0, "token_target": "lie", "w_tok": 1.0},
    "honesty": {"rep_mode": "in", "rep_sign": 1, "w_rep": 1.0, "token_target": "truth", "w_tok": 0.01},
    "dishonesty": {"rep_mode": "in", "rep_sign": -1, "w_rep": 1.0, "token_target": "lie", "w_tok": 0.01},
    "tune-out": {"rep_mode": "out", "w_rep": 1.0, "token_target": "none", "w_tok": 0.0},
    "pos": {"rep_mode": "in", "rep_sign": 1, "w_rep": 1.0, "token_target": "none", "w_tok": 0.0},
    "neg": {"rep_mode": "in", "rep_sign": -1, "w_rep": 1.0, "token_target": "none", "w_tok": 0.0},
}

# The paper's learning rates (Llama-2-13B): attention value/output projections at 1e-5, the rest
# of the trained blocks at 1e-6. Use with TuneConfig(param_groups=PAPER_PARAM_GROUPS, lr=1e-6).
PAPER_PARAM_GROUPS = [ParamGroup(pattern=r"self_attn\.(v_proj|o_proj)", lr=1e-5)]
