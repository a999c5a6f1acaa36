"""The report of ``reptune discover``: ``VECS.discovery.md`` (settings, ranked table, sample
completions, training, radius calibration, norm tuning).

:meth:`reptune.discovery.DiscoveryResult.markdown` and ``.save`` call it through
:mod:`reptune._render` (discovery sits below reporting on the import ladder and cannot import it).
Numbers go through :func:`~reptune.reporting.document.fmt` with 4 significant digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from reptune.reporting.document import fmt

if TYPE_CHECKING:
    from reptune.discovery.norm import NormCurve
    from reptune.discovery.run import DiscoveryResult

_fmt4 = partial(fmt, spec=".4g")
RANKED_COLUMNS = ("rank", "file", "index", "diverge", "logit_diff", "logit_shift", "match", "judge", "side_effect", "growth")


def _cell(text: str, limit: int = 160) -> str:
    """One Markdown table cell: one line, at most ``limit`` characters, ``|`` escaped."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def _order_note(settings: dict[str, Any]) -> str:
    """`` (sequential: ...)`` / `` (parallel: ...)`` after an orthogonal melbo/refinement run's setting."""
    order = settings.get("orthogonal_order")
    if not settings.get("orthogonal") or not order:
        return ""
    what = "vector i trained after vectors 0..i-1 were frozen" if order == "sequential" else "all trained at once, orthogonalised in order every step"
    return f" ({order}: {what})"


def _method_rows(result: DiscoveryResult) -> list[str]:
    """The settings rows only some methods have (training, candidates, DCT, search budget)."""
    from reptune.discovery.search import SEARCH_METHODS

    settings = result.settings
    lines = []
    if result.method == "melbo" or settings.get("refine_steps"):
        lines.append(f"| steps, lr | {settings.get('steps', settings.get('refine_steps'))}, {settings.get('lr')} (projected Adam, amsgrad, betas (0.9, 0.98)) |")
        penalty = f" - {settings['side_effect_penalty']:g} x side_effect" if result.method == "melbo" and settings.get("side_effect_penalty") else ""
        lines.append(f"| objective | sum_i (sum_t \\|\\|Delta_i,t\\|\\|_2^p)^(1/q){penalty}, p = {settings.get('p')}, q = {settings.get('q')} |")
    if result.method == "random":
        lines.append(f"| candidates | {settings.get('candidates')} |")
    if result.method == "dct":
        lines.append(f"| DCT iterations | {settings.get('dct_iters')} |")
    if result.method in SEARCH_METHODS:
        cost = settings.get("cost", {})
        what = (f"{settings.get('mode')} annealing from the best {len(result.vectors)} of {settings.get('candidates')} random vectors"
                if result.method == "anneal" else f"CMA-ES in the {settings.get('subspace')} subspace (d = {settings.get('dim')}, population {settings.get('population')})")
        lines.append(f"| search | {what}; objective {settings.get('objective')} |")
        lines.append(f"| budget | {settings.get('budget')} evaluations; spent: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in cost.items())
                     + f"; invalid (NaN) scores {settings.get('invalid', 0)} |")
    return lines


def _settings(result: DiscoveryResult) -> list[str]:
    """The title and the settings table."""
    settings = result.settings
    timing = ", ".join(f"{key.removesuffix('_s')} {value:.1f} s" for key, value in result.timings.items())
    radius_note = "calibrated: nonlinear/linear response = " + _fmt4(result.calibration.ratio) if result.calibration else "given"
    lines = [
        f"# reptune discover: {result.method} on {result.model_id}",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {result.method} |",
        f"| source layer (vectors added; output of block L) | {result.source} |",
        f"| target layer (change measured) | {result.target} |",
        f"| radius R (norm of every vector) | {result.radius:.6g} ({radius_note}) |",
        f"| vectors | {len(result.vectors)} |",
        f"| orthogonal | {settings.get('orthogonal')}{_order_note(settings)} |",
        f"| positions | {settings.get('positions')} |",
        *_method_rows(result),
        f"| prompts | {len(result.prompts)} |",
        f"| evaluation prompts | {len(result.eval_prompts)} ({'held out' if result.held_out else 'the training prompts, not held out'}) |",
        f"| ranked by | {result.rank_by} |",
        f"| seed | {settings.get('seed')} |",
        f"| time | {timing} |",
    ]
    return lines


def _ranked(result: DiscoveryResult) -> list[str]:
    """The ranked table, with how to steer with rank 1 and what ``side_effect`` means."""
    settings = result.settings
    lines = [
        "",
        "## Ranked vectors",
        "",
        (f"Rank 1 is the best vector by `{result.rank_by}`. Steer with multiplier 1 (the vector already has norm R), e.g. "
         f"`reptune steer --vector {result.vectors[0].file or 'VECS.safetensors'} -x 0 -x 1 --prompt ...`."),
        "",
    ]
    columns = [*RANKED_COLUMNS[:3], result.score_name, *RANKED_COLUMNS[3:]]
    table = result.table()
    present = [column for column in columns if any(row.get(column) is not None for row in table)]
    lines.append("| " + " | ".join(present) + " |")
    lines.append("|" + "---:|" * len(present))
    for row in table:
        lines.append("| " + " | ".join(_fmt4(row.get(column)) for column in present) + " |")
    if settings.get("side_effect_prompts"):
        penalty = settings.get("side_effect_penalty") or 0.0
        lines += ["", (f"`side_effect`: KL(unsteered || steered) of next-token distributions, nats per token, on "
                       f"{settings['side_effect_prompts']} neutral texts (0 = no change on ordinary text)"
                       + (f"; ranked by the primary score minus {penalty:g} x side_effect." if penalty else "."))]
    return lines


def _samples(result: DiscoveryResult, samples: int) -> list[str]:
    """The unsteered readout and the first ``samples`` prompts' completions, unsteered and per rank."""
    baseline = result.baseline
    if baseline is None:
        return []
    lines: list[str] = []
    base = [f"logit_diff {_fmt4(baseline.logit_diff)}" if baseline.logit_diff is not None else "",
            f"match {_fmt4(baseline.match)}" if baseline.match is not None else "",
            f"judge {_fmt4(baseline.judge)}" if baseline.judge is not None else ""]
    if any(base):
        lines += ["", "Unsteered: " + ", ".join(part for part in base if part) + "."]
    if result.settings.get("diverge_within"):
        note = (f"`diverge`: fraction of evaluation prompts whose greedy completion differs from the unsteered one "
                f"within the first {result.settings['diverge_within']} tokens.")
        lines += ["", note]
    lines += ["", "## Sample completions", ""]
    for number, prompt in enumerate(result.eval_prompts[:samples]):
        lines += [f"**Prompt {number + 1}:** {_cell(prompt, 300)}", "", "| vector | completion |", "|---|---|",
                  f"| unsteered | {_cell(baseline.completions[number])} |"]
        for item in result.vectors:
            if item.scores is not None:
                lines.append(f"| rank {item.rank} | {_cell(item.scores.completions[number])} |")
        lines.append("")
    return lines


def _training(result: DiscoveryResult) -> list[str]:
    """The objective per vector: first and final (MELBO, random search), every iteration (DCT)."""
    if not (result.history and any(result.history)):
        return []
    lines = ["## Training", ""]
    if result.method == "dct":
        curve = result.history[0]
        lines.append(f"DCT objective sum_l u_l . Delta(R v_l) per iteration: {', '.join(_fmt4(value) for value in curve)}.")
    else:
        lines += ["| rank | objective at step 0 | final objective |", "|---:|---:|---:|"]
        for item in result.vectors:
            curve = result.history[item.index]
            if curve:
                lines.append(f"| {item.rank} | {_fmt4(curve[0])} | {_fmt4(item.method_score)} |")
    lines.append("")
    return lines


def norm_markdown(curves: Sequence[NormCurve], labels: Sequence[str], figure: str | None = None) -> str:
    """The norm-tuning section: per vector the appear / degenerate / best radius and the growth statistic."""
    lines = [
        (f"Radii {', '.join(f'{r:.4g}' for r in curves[0].radii)}. `appear`: smallest R where the behaviour signal reaches half its "
        "largest rise over the grid; `degenerate`: smallest R where at least half the completions are empty or repetitive; "
        "`best`: strongest signal below it; `growth`: dispersion of the normalised per-dimension response derivative "
        "(0 = every dimension grows in proportion)."),
        "",
        "| vector | signal | appear R | degenerate R | best R | growth | objective (by R) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, curve in zip(labels, curves):
        lines.append(f"| {name} | {curve.signal or '-'} | {_fmt4(curve.appear_radius)} | {_fmt4(curve.degenerate_radius)} | "
                     f"{_fmt4(curve.best_radius)} | {curve.growth:.3f} | {', '.join(f'{v:.3g}' for v in curve.objective)} |")
    if figure:
        lines += ["", f"![norm curves]({figure})"]
    return "\n".join(lines) + "\n"


def _appendix(result: DiscoveryResult, figure: str | None) -> list[str]:
    """Radius calibration, the random-radius sweep and norm tuning, where the run did them."""
    lines: list[str] = []
    if result.calibration is not None:
        lines += ["## Radius calibration", "", result.calibration.markdown()]
    if result.sweep is not None:
        lines += ["## Random vectors over a log grid of radii", "", result.sweep.markdown()]
    if result.norm:
        lines += ["## Norm tuning", "", norm_markdown(result.norm, [f"rank {item.rank}" for item in result.vectors], figure)]
    return lines


def discovery_markdown(result: DiscoveryResult, samples: int = 4, figure: str | None = None) -> str:
    """The whole report of a :class:`~reptune.discovery.DiscoveryResult`.

    Args:
        samples: how many evaluation prompts show their completions.
        figure: the norm-curve PNG's file name, linked from the norm-tuning section.
    """
    lines = _settings(result) + _ranked(result) + _samples(result, samples) + _training(result) + _appendix(result, figure)
    return "\n".join(lines).rstrip() + "\n"
