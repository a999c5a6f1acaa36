"""Tuning configuration: one dataclass, named presets, JSON round trip.

``loss = w_tok * token_loss + w_rep * representation_loss + w_retain * retain_loss``

Presets (named as in the Representation Tuning paper):

============  =====================================================================
``truth``     token loss only, target = the correct answer letter
``lie``       token loss only, target = the wrong answer letter
``honesty``   tune in ``+v`` (``(1-cos)/2``) + truth token loss / 100
``dishonesty`` tune in ``-v`` + lie token loss / 100
``tune-out``  remove ``v`` (``|cos|``) + truth token loss / 100
``pos``       tune in ``+v`` + soft 50/50 token loss / 100
``neg``       tune in ``-v`` + soft 50/50 token loss / 100
============  =====================================================================

Every field can be overridden (``TuneConfig.from_preset("honesty", lr=1e-5)``, or CLI flags).
``TuneConfig.from_preset(name, paper=True)`` adds the optimisation of the paper's code
(:data:`PAPER_SETTINGS`): representation loss routed to the attention v/o projections only,
its learning rates, AdamW eps 1e-4 and weight decay 0.1, linear warm-up/decay, no clipping, one
position 8 tokens from the end of the prompt with that position's direction.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from reptune.errors import ReptuneError

REP_MODES = ("in", "out", "none")
ROUTINGS = ("all", "paper")
LR_SCHEDULES = ("constant", "linear")
EARLY_STOP_TERMS = ("loss", "rep", "tok")
TOKEN_TARGETS = ("truth", "lie", "soft", "sft", "none")
RETAIN_MODES = ("none", "kl", "act", "both")
AUTOCAST_MODES = (None, "bf16", "fp16")


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
        rep_layers: layers whose output the representation loss reads, each with the vector's
            direction for that layer; ``None`` = every trained layer the vector has. The loss is
            averaged over layers x selected positions x batch.
        allow_blocks_beyond_rep: allow trained blocks deeper than every representation layer
            (they get no representation-loss gradient, only the token loss: refused by default).
        rep_mode: ``in`` (pull toward ``rep_sign * v``), ``out`` (remove ``v``), ``none``.
        rep_sign: +1 or -1 (tune in ``+v`` or ``-v``).
        rep_positions: ``last`` (last prompt token), ``last:N``, ``all`` (prompt tokens),
            ``generated`` (answer/completion tokens), or ``pos:K`` (K < 0: the one prompt token K
            from the end, -1 = last; the vector must be that position's own direction, e.g.
            ``STEM.pos-8.safetensors`` from ``reptune extract --positions last:N --per-position``).
        routing: ``all`` (every loss term updates every trained parameter) or ``paper`` (the
            representation term updates only the parameters matching ``rep_params``, the token
            and retain terms every trained parameter, as in the paper's code).
        rep_params: regex over trained parameter names for ``routing='paper'``.
        token_target: ``truth`` / ``lie`` (answer letter), ``soft`` (50/50 over the two
            letters), ``sft`` (completion tokens), ``none``.
        retain: ``none``, ``kl`` (KL(base || tuned) of next-token distributions on a retain
            corpus), ``act`` (L2 to frozen activations at the trained layers), ``both``.
        param_groups: per-pattern learning rates inside the trained blocks; first match wins,
            other parameters of the trained blocks use ``lr``.
        retain_data: retain corpus (dataset argument or text file); ``None`` = WikiText-2 *train*
            when ``$REPTUNE_DATA_DIR`` holds ``wikitext2/wiki.train.raw``, else reptune's shipped
            neutral text. Never the training prompts (texts inside a training prompt are dropped);
            the retain loss never covers a text's last position (the answer position of a prompt).
        w_retain: weight of the retain term; must be positive exactly when ``retain`` is not ``none``.
        autocast: mixed precision of every training forward pass: ``bf16``/``fp16`` autocast over
            the fp32 weights (LM head in fp32), or ``None`` (fp32), whatever the model was loaded with.
        train_modules: regex; only parameters of the trained blocks whose name matches train.
        adam_eps, weight_decay: AdamW's eps and (decoupled) weight decay.
        lr_schedule: ``constant``, or ``linear`` (``transformers.get_linear_schedule_with_warmup``:
            0 -> lr over ``warmup_steps``, then linearly to 0 at ``steps``).
        max_grad_norm: clip the global gradient norm (0 = no clipping).
        early_stop_on: validation quantity early stopping and best-weights selection use:
            ``loss`` (weighted total), ``rep`` or ``tok``.
        lora: train LoRA adapters (peft) instead of the weights; ``lora_targets`` is a regex
            over module names inside the trained blocks.
    """

    preset: str = "custom"
    layers: str = "middle"
    rep_layers: str | None = None
    allow_blocks_beyond_rep: bool = False
    rep_mode: str = "in"
    rep_sign: int = 1
    rep_positions: str = "last"
    routing: str = "all"
    rep_params: str = r"self_attn\.(v_proj|o_proj)\."
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
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    early_stop_on: str = "loss"
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
    autocast: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.autocast in ("none", "fp32"):
            self.autocast = None
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
            (self.routing in ROUTINGS, f"routing must be one of {ROUTINGS}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.warmup_steps >= 0, "warmup_steps must be non-negative"),
            (self.adam_eps > 0 and self.weight_decay >= 0 and self.max_grad_norm >= 0, "adam_eps must be positive, weight_decay and max_grad_norm non-negative"),
            (self.early_stop_on in EARLY_STOP_TERMS, f"early_stop_on must be one of {EARLY_STOP_TERMS}"),
            (self.autocast in AUTOCAST_MODES, f"autocast must be one of {AUTOCAST_MODES} (None = fp32)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ReptuneError(message)
        if self.early_stop_on == "rep" and not self.uses_vector or self.early_stop_on == "tok" and not self.uses_tokens:
            raise ReptuneError(f"early_stop_on {self.early_stop_on!r} watches a loss term this config does not use")
        rep_position(self.rep_positions)  # a malformed pos:K is an error here
        try:
            re.compile(self.rep_params)
        except re.error:
            raise ReptuneError(f"rep_params {self.rep_params!r} is not a valid regex") from None
        if self.retain != "none" and self.w_retain == 0:
            raise ReptuneError(f"retain {self.retain!r} needs a positive w_retain (--w-retain), e.g. 1.0")
        if self.retain == "none" and self.w_retain > 0:
            raise ReptuneError(f"w_retain is {self.w_retain:g} but retain is 'none': set retain (kl, act or both) or w_retain 0")

    @property
    def uses_vector(self) -> bool:
        return self.rep_mode != "none" and self.w_rep > 0

    @property
    def uses_tokens(self) -> bool:
        return self.token_target != "none" and self.w_tok > 0

    @classmethod
    def from_preset(cls, name: str, *, paper: bool = False, **overrides: Any) -> TuneConfig:
        """A named preset with field overrides (``None`` values are ignored).

        ``paper=True`` layers the paper's optimisation (:func:`paper_settings`) between the
        preset and the overrides.
        """
        if name not in PRESETS:
            raise ReptuneError(f"unknown preset {name!r}: choose {', '.join(PRESETS)}")
        values = {**PRESETS[name], **(paper_settings(name) if paper else {}), "preset": name}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ReptuneError(f"unknown tuning option(s): {', '.join(sorted(unknown))}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """What each loss term does, where and on which parameters, from the config alone.

        The same listing, resolved against a model and a vector (actual layers and parameter
        names), is :meth:`reptune.tuning.trainer.Tuner.plan`.
        """
        return describe_config(self)

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


# The paper's code (cma1114/representation_tuning, custom_fine_tune.ipynb) names these
# TrainType.Truth, Lie, TuneInPosPlusTruth, TuneInNegPlusLie, TuneOut, TuneInPos, TuneInNeg.
PRESETS: dict[str, dict[str, Any]] = {
    "truth": {"rep_mode": "none", "w_rep": 0.0, "token_target": "truth", "w_tok": 1.0},
    "lie": {"rep_mode": "none", "w_rep": 0.0, "token_target": "lie", "w_tok": 1.0},
    "honesty": {"rep_mode": "in", "rep_sign": 1, "w_rep": 1.0, "token_target": "truth", "w_tok": 0.01},
    "dishonesty": {"rep_mode": "in", "rep_sign": -1, "w_rep": 1.0, "token_target": "lie", "w_tok": 0.01},
    "tune-out": {"rep_mode": "out", "w_rep": 1.0, "token_target": "truth", "w_tok": 0.01},
    "pos": {"rep_mode": "in", "rep_sign": 1, "w_rep": 1.0, "token_target": "soft", "w_tok": 0.01},
    "neg": {"rep_mode": "in", "rep_sign": -1, "w_rep": 1.0, "token_target": "soft", "w_tok": 0.01},
}

# The paper's learning rates (Llama-2-13B): attention value/output projections at 1e-5, the rest
# of the trained blocks at 1e-6. Use with TuneConfig(param_groups=PAPER_PARAM_GROUPS, lr=1e-6).
PAPER_PARAM_GROUPS = [ParamGroup(pattern=r"self_attn\.(v_proj|o_proj)\.", lr=1e-5)]

# The paper's representation position: key_token_offset 2 and target_position_offsets [7] read
# the prompt token 7 before the last one, with direction_indexes [15] = 22 - 7 of the last-22
# per-position directions, i.e. that position's own direction.
PAPER_REP_POSITIONS = "pos:-8"

# The paper's optimisation, for every preset (custom_fine_tune.ipynb, cells 4-5).
PAPER_SETTINGS: dict[str, Any] = {
    "lr": 1e-6,  # learning_rate_tok
    "adam_eps": 1e-4,
    "weight_decay": 0.1,
    "lr_schedule": "linear",  # get_linear_schedule_with_warmup(num_warmup_steps=10)
    "warmup_steps": 10,
    "max_grad_norm": 0.0,  # no clipping
}
# ... and, for the presets with a representation term: the loss on v/o only, v/o at 1e-5
# (learning_rate_proj, also for the token loss on them), one position, early stopping on the
# validation representation loss (the token-only presets stop on the token loss).
PAPER_REP_SETTINGS: dict[str, Any] = {
    "routing": "paper",
    "param_groups": PAPER_PARAM_GROUPS,
    "rep_positions": PAPER_REP_POSITIONS,
    "early_stop_on": "rep",
}


def paper_settings(preset: str) -> dict[str, Any]:
    """The paper's optimisation settings for ``preset`` (fields of :class:`TuneConfig`)."""
    if PRESETS[preset]["rep_mode"] == "none":
        return {**PAPER_SETTINGS, "early_stop_on": "tok"}
    return {**PAPER_SETTINGS, **PAPER_REP_SETTINGS, "param_groups": [dataclasses.asdict(group) for group in PAPER_PARAM_GROUPS]}


def rep_position(spec: str) -> int | None:
    """K for ``pos:K`` (one prompt token K from the end, -1 = last); ``None`` for other specs.

    Raises:
        ReptuneError: ``pos:`` without a negative integer.
    """
    if not spec.startswith("pos:"):
        return None
    try:
        offset = int(spec[4:])
    except ValueError:
        offset = 0
    if offset >= 0:
        raise ReptuneError(f"invalid rep_positions {spec!r}: pos:K needs a negative integer K (-1 = the last prompt token)")
    return offset


TOKEN_DOC = {
    "truth": "cross-entropy on the correct answer letter",
    "lie": "cross-entropy on the wrong answer letter",
    "soft": "cross-entropy to 50/50 over the two answer letters",
    "sft": "next-token cross-entropy on the completion tokens",
}


def _positions_doc(spec: str) -> str:
    offset = rep_position(spec)
    if offset is not None:
        return f"one prompt token, at {offset} from the end (-1 = the last), with that position's own direction"
    return {"last": "last prompt token", "all": "every prompt token", "generated": "completion tokens"}.get(spec, f"prompt tokens {spec}")


def describe_config(config: TuneConfig) -> dict[str, Any]:
    """Per loss term: formula, weight, layers, positions and the parameters it updates (symbolic)."""
    everything = f"every trained parameter of blocks {config.layers}" + ("" if config.train_modules == ".*" else f" matching {config.train_modules!r}")
    if config.lora:
        everything = f"LoRA adapters ({config.lora_targets}) in blocks {config.layers}"
    terms: dict[str, Any] = {}
    if config.uses_tokens:
        where = "completion tokens" if config.token_target == "sft" else "last prompt token (predicts the answer letter)"
        terms["token"] = {"weight": config.w_tok, "loss": TOKEN_DOC[config.token_target], "position": where, "updates": everything}
    if config.uses_vector:
        formula = "|cos(h, v)|" if config.rep_mode == "out" else f"(1 - cos(h, {'+' if config.rep_sign > 0 else '-'}v)) / 2"
        updates = everything if config.routing == "all" else f"only trained parameters matching {config.rep_params!r}"
        terms["representation"] = {
            "weight": config.w_rep, "loss": formula, "averaged_over": "layers x positions x batch",
            "layers": config.rep_layers or f"every trained layer ({config.layers}) the vector has, each with its own direction",
            "positions": _positions_doc(config.rep_positions), "updates": updates,
        }
    if config.retain != "none":
        terms["retain"] = {
            "weight": config.w_retain, "loss": {"kl": "KL(base || tuned)", "act": "L2 to base activations", "both": "KL + L2"}[config.retain],
            "corpus": config.retain_data or "default (WikiText-2 train if present, else shipped neutral text)",
            "positions": "every token but each text's last", "updates": everything,
        }
    groups = [f"{group.pattern} at {group.lr:g}" for group in config.param_groups]
    return {
        "trained_blocks": config.layers,
        "terms": terms,
        "optimizer": {
            "name": "AdamW", "lr": config.lr, "param_groups": groups, "eps": config.adam_eps, "weight_decay": config.weight_decay,
            "schedule": config.lr_schedule + (f" (warm-up {config.warmup_steps} steps)" if config.warmup_steps else ""),
            "max_grad_norm": config.max_grad_norm or None, "batch_size": config.batch_size, "steps": config.steps,
        },
        "early_stopping": f"validation {config.early_stop_on} every {config.eval_every} steps, patience {config.patience}",
        "precision": config.autocast or "fp32",
    }
