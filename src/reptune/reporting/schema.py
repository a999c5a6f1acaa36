"""The results contract: ``results.json`` of an experiment (format ``reptune-experiment/1``).

One pydantic schema, :class:`ExperimentResults`, used on both sides: :func:`reptune.pipeline.analysis.build_results`
builds it (and the pipeline writes :meth:`Record.to_json`), the report reads a file through
:meth:`ExperimentResults.read` (:func:`reptune.reporting.experiment.load_experiment_results`).

Rules, so that old files keep loading and a file written from the schema is the file written before it:

* every field is optional (``None`` when the file leaves it out) and every other key is kept as it
  is (``extra="allow"``): files of older and newer runs load;
* leaves are checked, never converted: a number stays the int or float it was (:data:`Number`),
  a string must be a string (:data:`Text`), a flag a boolean (:data:`Flag`); a wrong type is a
  ValidationError naming the entry;
* :meth:`Record.to_json` gives back exactly the keys the record was made from (fields left out stay
  out), in the order they came in, so ``Schema.model_validate(d).to_json() == d`` key for key;
* an empty record is falsy, as the empty JSON object was.

Open structures that other modules define and the report only passes through (the resolved config,
machine info, training plans and metrics, layer-scan rows, projection items, representation rows,
per-seed claim tests) stay ``dict[str, Any]``.
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, PrivateAttr, model_serializer, model_validator

FORMAT = "reptune-experiment/1"


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be a number, got {type(value).__name__}")  # noqa: TRY004 - pydantic turns only ValueError into a ValidationError
    return value


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")  # noqa: TRY004
    return value


def _flag(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {type(value).__name__}")  # noqa: TRY004
    return value


# checked as they are, never converted (pydantic's own float would turn the int 3 into 3.0)
Number = Annotated[Any, AfterValidator(_number)]
Text = Annotated[Any, AfterValidator(_text)]
Flag = Annotated[Any, AfterValidator(_flag)]
Object = dict[str, Any]


class Record(BaseModel):
    """One JSON object of ``results.json``: its named fields checked, every other key kept."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    _keys: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _remember_key_order(cls, data: Any, handler: Any) -> Any:
        record = handler(data)
        if isinstance(data, dict):
            record._keys = tuple(data)
        return record

    @model_serializer(mode="wrap")
    def _in_key_order(self, handler: Any) -> Any:
        out = handler(self)
        rank = {key: i for i, key in enumerate(self._keys)}
        return dict(sorted(out.items(), key=lambda item: rank.get(item[0], len(rank))))

    def __bool__(self) -> bool:
        return bool(self.model_fields_set or self.model_extra)

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the keys it was made from, in that order (nested records too)."""
        return self.model_dump(exclude_unset=True)


# ----------------------------------------------------------------------------- the run


class ModelInfo(Record):
    model_id: Text | None = None
    revision: Text | None = None
    precision: Text | None = None
    precision_reason: Text | None = None
    machine: Object | None = None
    num_layers: Number | None = None
    hidden_size: Number | None = None


class DataInfo(Record):
    statements: Text | None = None
    origin: Text | None = None
    splits: dict[str, Number] | None = None
    files: dict[str, Text] | None = None
    twins: Flag | None = None
    pairs: dict[str, Number] | None = None


class Skipped(Record):
    what: Text | None = None
    reason: Text | None = None


class VectorInfo(Record):
    file: Text | None = None
    layer: Number | None = None
    method: Text | None = None
    positions: Text | None = None
    scan: list[Object] | None = None  # LayerScore rows (layer, pair_acc, probe_acc, label_acc, gap, effect, norm, rel_norm)
    scan_png: Text | None = None
    rule: Text | None = None
    pairs: Number | None = None


class Steering(Record):
    layer: Number | None = None
    multiplier: Number | None = None
    vector: Text | None = None  # a counter-steering vector other than the training vector ("other", "random1", ...)


class Estimate(Record):
    """A measured value with its confidence interval and the number of items behind it."""

    value: Number | None = None
    ci_low: Number | None = None
    ci_high: Number | None = None
    n: Number | None = None


class SteeringCell(Estimate, Steering):
    """An estimate at one steering setting: ``layer``, ``multiplier``, ``value``, ``ci_low``, ``ci_high``, ``n``.

    The bases in this order put the steering fields first (pydantic collects fields base by base,
    the last-listed base first), as the sweep and robustness rows have always listed them.
    """


class Condition(Record):
    """One evaluated model: ``kind`` untuned, steered, tuned or counter (tuned + counter-steering)."""

    id: Text
    label: Text | None = None
    kind: Text | None = None
    variant: Text | None = None
    steering: Steering | None = None
    preset: Text | None = None


class Timings(Record):
    total_s: Number | None = None
    this_run_s: Number | None = None
    stages: dict[str, Number] | None = None
    counts: dict[str, dict[str, Number]] | None = None  # per stage: task items scored, optimiser steps taken
    workers: Number | None = None  # processes that ran stages (2: with a stage worker)
    worker_exit: Number | None = None  # the stage worker's exit code (None: it was ended at the end of the run)


class StageNames(Record):
    ran: list[Text] | None = None
    reused: list[Text] | None = None
    by_worker: list[Text] | None = None  # of ``ran``: those the stage worker ran


# ----------------------------------------------------------------------------- steering sweep and training


class SweepRow(SteeringCell):
    """One (layer, multiplier) cell on the validation split; ``layer`` None: unsteered."""

    same_answer_rate: Number | None = None
    same_letter_rate: Number | None = None
    mean_nll: Number | None = None
    lie_rate: Number | None = None
    mean_margin: Number | None = None
    metric: Text | None = None
    effect: Number | None = None
    degenerate: Flag | None = None
    degenerate_reason: Text | None = None


class Selection(Record):
    """What the sweep chose (:func:`reptune.pipeline.selection.select_steering`)."""

    layer: Number | None = None
    positive: Number | None = None
    negative: Number | None = None
    effect_positive: Number | None = None
    effect_negative: Number | None = None
    spread: Number | None = None
    degenerate: list[Object] | None = None
    moved: Flag | None = None
    fallback: list[Text] | None = None


class Sweep(Record):
    task: Text | None = None
    split: Text | None = None
    layers: list[Number] | None = None
    layer: Number | None = None
    metric: Text | None = None
    rows: list[SweepRow] | None = None
    rule: Text | None = None
    selected: Selection | None = None

    def choice(self) -> tuple[Any, set[float]]:
        """The selected layer and its selected multipliers (m+ and m-)."""
        selected = self.selected or Selection()
        chosen = {float(m) for m in (selected.positive, selected.negative) if m is not None}
        return (selected.layer if "layer" in selected.model_fields_set else self.layer), chosen


class TrainingRun(Record):
    """One variant x seed of the training stage."""

    dir: Text | None = None
    preset: Text | None = None
    steps: Number | None = None
    best_step: Number | None = None
    elapsed_s: Number | None = None
    stopped: Text | None = None
    loss_curves: Object | None = None  # {step, total, token, rep, retain, ..., val_step, val_loss: [per step]}
    metrics: Object | None = None  # the run's metrics.json
    layers: Any = None
    lr: Number | None = None
    lora: Flag | None = None
    retain: Text | None = None
    plan: Object | None = None  # tuning_plan(): what each loss term trains


# ----------------------------------------------------------------------------- scores and tests


class Metric(Estimate):
    """A metric of a condition on a task: over several seeds the mean, the CI envelope and ``per_seed``."""

    per_seed: list[Number | None] | None = None


class TaskScore(Record):
    primary: Text | None = None
    metrics: dict[str, Metric | None] | None = None


class Comparison(Record):
    """A McNemar row of two conditions on one task and seed (``status`` tested / not tested)."""

    task: Text | None = None
    a: Text | None = None
    b: Text | None = None
    seed: Number | None = None
    n: Number | None = None
    metric: Text | None = None
    a_value: Number | None = None
    b_value: Number | None = None
    p_value: Number | None = None
    method: Text | None = None
    status: Text | None = None
    p_holm: Number | None = None
    reason: Text | None = None
    discordant: Number | None = None


class RobustnessCell(SteeringCell):
    same_letter_rate: Number | None = None
    degenerate: Flag | None = None


class RobustnessGrid(Record):
    """:meth:`reptune.evaluation.tasks.robustness.RobustnessResult.to_json` of one condition."""

    task: Text | None = None
    metric: Text | None = None
    layers: list[Any] | None = None
    multipliers: list[Number] | None = None
    degenerate_threshold: Number | None = None
    vector_layers: list[Any] | None = None
    cells: list[RobustnessCell] | None = None

    def table(self) -> tuple[list[Any], list[Any], dict[tuple[Any, float], RobustnessCell]]:
        """(layers, multipliers, ``{(layer, multiplier): cell}``); axes from the cells when the grid has none."""
        cells = {(c.layer, float("nan") if c.multiplier is None else float(c.multiplier)): c for c in self.cells or []}
        layers = list(self.layers or dict.fromkeys(k[0] for k in cells))
        mults = list(self.multipliers or sorted({k[1] for k in cells}))
        return layers, mults, cells


class Projection(Record):
    layer_note: Text | None = None
    by_condition: dict[str, list[Object] | None] | None = None  # items: prompt, tokens, layers, cosine [layers][tokens]


# ----------------------------------------------------------------------------- claims and the answer


class CounterVector(Record):
    """One counter-steering vector besides the training vector (``pipeline.counter``)."""

    file: Text | None = None
    cosine_to_training: Number | None = None
    norm: Number | None = None
    raw_norm: Number | None = None
    pairs: Number | None = None
    data: Text | None = None


class CounterRow(Record):
    """A variant's accuracy without and with counter-steering by one vector, one seed (paired items)."""

    variant: Text | None = None
    vector: Text | None = None
    seed: Number | None = None
    n: Number | None = None
    unsteered: Number | None = None
    countered: Number | None = None
    drop: Number | None = None
    ci_low: Number | None = None
    ci_high: Number | None = None


class CounterVectors(Record):
    """The other-data vector and the random floor, at the steering layer, norm-matched to the training vector."""

    dir: Text | None = None
    layer: Number | None = None
    norm: Number | None = None
    judge_on: Text | None = None
    task: Text | None = None
    vectors: dict[str, CounterVector | None] | None = None  # {"other" | "random1" ...: vector}
    rows: list[CounterRow] | None = None


class Mde(Record):
    value: Number | None = None
    n: Number | None = None
    alpha: Number | None = None
    power: Number | None = None
    perplexity_ratio: Number | None = None
    text: Text | None = None


class ContextRow(Record):
    """A row beside ``tuning-beats-steering`` (not part of the decision)."""

    a: Text | None = None
    b: Text | None = None
    task: Text | None = None
    what: Text | None = None
    seed: Number | None = None
    n: Number | None = None
    a_value: Number | None = None
    b_value: Number | None = None
    effect: Number | None = None
    p_value: Number | None = None
    mde: Number | None = None
    degenerate: Text | None = None


class Claim(Record):
    """One of the paper's claims (:func:`reptune.pipeline.claims.judge`)."""

    id: Text | None = None
    claim: Text | None = None
    verdict: Text | None = None
    evidence: Text | None = None
    reason: Text | None = None
    short_reason: Text | None = None  # not tested: why, in a few words (the first screen)
    p_value: Number | None = None
    p_holm: Number | None = None
    method: Text | None = None
    mde: Mde | None = None
    tests: list[Object] | None = None  # per seed
    degenerate: list[Any] | None = None
    context: list[ContextRow] | None = None
    gate: Object | None = None
    judged_on: Text | None = None  # resists-counter-steering: the counter-steering vector it was judged on
    floor: list[Object] | None = None  # resists-counter-steering: the attack beyond the random floor, per seed


class Gate(Record):
    """The learnability gate (:func:`reptune.pipeline.selection.learnability_gate` and the values it saw)."""

    passed: Flag | None = None
    reason: Text | None = None
    truth_move: Number | None = None
    lie_move: Number | None = None
    min_move: Number | None = None
    task: Text | None = None
    split: Text | None = None
    untuned: Number | None = None
    truth: dict[str, Any] | None = None  # {seed: value}
    lie: dict[str, Any] | None = None


class Knowledge(Record):
    """What the untuned model knows (:func:`reptune.pipeline.selection.knowledge_summary`)."""

    task: Text | None = None
    split: Text | None = None
    n: Number | None = None
    known: Number | None = None
    share: Number | None = None
    by_topic: dict[str, Object] | None = None  # {topic: {known, n, share}}


class HeadlineRow(Record):
    condition: Text | None = None
    label: Text | None = None
    value: Number | None = None
    ci_low: Number | None = None
    ci_high: Number | None = None
    n: Number | None = None


class Headline(Record):
    task: Text | None = None
    metric: Text | None = None
    rows: list[HeadlineRow] | None = None


# ----------------------------------------------------------------------------- the file


class ExperimentResults(Record):
    """``results.json`` of ``reptune run``, in the order the pipeline writes it."""

    format: Text | None = None
    name: Text | None = None
    created: Text | None = None
    reptune_version: Text | None = None
    command: Text | None = None
    model: ModelInfo | None = None
    config: Object | None = None  # the resolved ExperimentConfig
    config_yaml: Text | None = None
    seeds: list[Number] | None = None
    seed_note: Text | None = None
    data: DataInfo | None = None
    tasks: list[Text] | None = None
    skipped: list[Skipped] | None = None
    vector: VectorInfo | None = None
    sweep: Sweep | None = None
    training: dict[str, dict[str, TrainingRun | None] | None] | None = None  # {variant: {seed: run}}
    conditions: list[Condition] | None = None
    scores: dict[str, dict[str, TaskScore | None] | None] | None = None  # {condition: {task: score}}
    eval_files: dict[str, dict[str, Text] | None] | None = None  # {condition: {seed: results file}}
    comparisons: list[Comparison] | None = None
    robustness: dict[str, RobustnessGrid | None] | None = None  # {condition: grid}
    projection: Projection | None = None
    representation: list[Object] | None = None  # {condition, layer, mean_cosine, mean_projection, n, accuracy, ...}
    counter: CounterVectors | None = None
    studies: dict[str, Object | None] | None = None  # {study name: its section}, see reptune.pipeline.studies
    claims: list[Claim] | None = None
    claims_rule: Text | None = None
    gate: Gate | None = None
    findings: list[Text] | None = None
    headline: Headline | None = None
    learnability: Gate | None = None
    knowledge: Knowledge | None = None
    timings: Timings | None = None
    stages: StageNames | None = None
    versions: Object | None = None

    def conditions_by_id(self) -> dict[str, Condition]:
        """Condition id -> condition, including ids that only appear in ``scores`` (kind ``other``)."""
        out: dict[str, Condition] = {cond.id: cond for cond in self.conditions or []}
        for cid in self.scores or {}:
            out.setdefault(cid, Condition(id=cid, label=cid, kind="other", variant=None, steering=None))
        return out

    def task_names(self) -> list[str]:
        """Every scored task, the headline task first."""
        found: list[str] = []
        head = (self.headline or Headline()).task
        scores = self.scores or {}
        if head and any(head in (by_task or {}) for by_task in scores.values()):
            found.append(head)
        for by_task in scores.values():
            for task in by_task or {}:
                if task not in found:
                    found.append(task)
        return found


# ----------------------------------------------------------------------------- studies (results.studies.<name>)


class SampleEfficiencyRow(Record):
    """One (size, variant) of the sample-efficiency study: accuracy over seeds and how each seed was trained."""

    size: Text | None = None  # "16" ... or "all"
    n: Number | None = None  # training items
    variant: Text | None = None
    value: Number | None = None  # mean over seeds
    ci_low: Number | None = None  # envelope of the per-seed 95% Wilson intervals
    ci_high: Number | None = None
    items: Number | None = None  # test items
    seeds: list[Number] | None = None
    per_seed: list[Number | None] | None = None
    seed_ci: list[list[Number | None]] | None = None
    steps: list[Number | None] | None = None  # steps run (early stopping may end sooner)
    best_step: list[Number | None] | None = None
    budget_steps: list[Number | None] | None = None
    batch_size: list[Number | None] | None = None
    train_items: list[Number | None] | None = None
    val_items: list[Number | None] | None = None
    reused: list[Flag] | None = None  # the main run's training and evaluation (n = all)
    cosine: list[Number | None] | None = None
    degenerate: list[Text | None] | None = None


class SampleEfficiencyDifference(Record):
    """Per size: the compared variant minus the baseline on the same items (mean over seeds; per seed with a paired bootstrap CI)."""

    size: Text | None = None
    n: Number | None = None
    value: Number | None = None
    ci_low: Number | None = None
    ci_high: Number | None = None
    per_seed: list[Object] | None = None  # {seed, effect, ci_low, ci_high}


class SampleEfficiencyTarget(Record):
    value: Number | None = None
    rule: Text | None = None
    reference: Number | None = None
    reference_size: Text | None = None
    tolerance: Number | None = None


class SampleEfficiencyReach(Record):
    """The smallest size at which a variant's mean accuracy reaches the target (``size`` None: never)."""

    variant: Text | None = None
    size: Text | None = None
    n: Number | None = None
    per_seed: list[Text | None] | None = None
    best: Number | None = None
    best_size: Text | None = None
    note: Text | None = None


class SampleEfficiency(Record):
    """``results.studies.sample_efficiency`` (:mod:`reptune.pipeline.studies.sample_efficiency`)."""

    task: Text | None = None
    split: Text | None = None
    items: Number | None = None
    item_kind: Text | None = None
    train_items: Number | None = None
    variants: list[Text] | None = None  # [baseline, compared]
    seeds: list[Number] | None = None
    sizes: list[Object] | None = None  # {size, n}
    budget: Text | None = None
    rows: list[SampleEfficiencyRow] | None = None
    untuned: Estimate | None = None
    target: SampleEfficiencyTarget | None = None
    reach: list[SampleEfficiencyReach] | None = None
    label_ratio: Number | None = None  # the baseline's n to the target over the compared variant's
    differences: list[SampleEfficiencyDifference] | None = None
    ci_rule: Text | None = None
    degenerate: list[Text] | None = None
    notes: list[Text] | None = None
    subsets: dict[str, dict[str, Text]] | None = None  # {seed: {size: CSV}}
    claim: Text | None = None  # the id of its claim in results.claims


class GeneralisationRow(Record):
    """One variant's accuracy on one item set beside the untuned model's on the same items, one seed."""

    variant: Text | None = None
    seed: Number | None = None
    set: Text | None = None  # id, ood, easy, hard, tqa-ab, tqa-mc1
    model: Text | None = None  # leave-topic-out, easy-to-hard, main
    n: Number | None = None
    untuned: Number | None = None
    value: Number | None = None
    ci_low: Number | None = None
    ci_high: Number | None = None
    gain: Number | None = None
    gain_low: Number | None = None
    gain_high: Number | None = None
    reference: Number | None = None  # the main run's model (trained on the whole train split) on the same items
    reference_gain: Number | None = None
    reference_n: Number | None = None


class GeneralisationGap(Record):
    """Gain on the near items minus gain on the far items (``topic``: in-distribution vs held-out; ``difficulty``: easy vs hard)."""

    variant: Text | None = None
    seed: Number | None = None
    kind: Text | None = None
    near_gain: Number | None = None
    far_gain: Number | None = None
    gap: Number | None = None
    ci_low: Number | None = None
    ci_high: Number | None = None
    near_n: Number | None = None
    far_n: Number | None = None


class GeneralisationStudy(Record):
    """``results.studies.generalisation`` (:mod:`reptune.pipeline.studies.generalisation`)."""

    task: Text | None = None
    split: Text | None = None
    variants: list[Text] | None = None
    baseline: Text | None = None
    candidate: Text | None = None
    seeds: list[Number] | None = None
    steps: dict[str, Number] | None = None
    leave_topic_out: Object | None = None  # {auto, holdout_seed, topics, folds: [{tag, holdout, train_topics, train_items, ood_items}], ood_items, id_items}
    easy_to_hard: Object | None = None  # {file, train_items, easy_items, margin_cut, hard_items, hard_margin_cut, untuned_hard, ...}
    far: Object | None = None  # {tasks, skipped: [{task, reason}]}
    rows: list[GeneralisationRow] | None = None
    gaps: list[GeneralisationGap] | None = None
