"""The main job (``reptune demo``): honesty vector on the embedded model, steering, report.

Steps: load SmolLM2-135M-Instruct (or ``model``), build honest/dishonest persona pairs from
reptune's shipped statements, read all layers once (mean-diff + layer scan), steer greedy
generations at the best layer over a multiplier sweep, and write ``report.md`` with the scan
table, scan plot and side-by-side completions. Every file is written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reptune._io import write_json_atomic, write_text_atomic
from reptune.data import load_contrast_pairs
from reptune.directions import extract_vector
from reptune.models import load_model
from reptune.reporting import scan_markdown, write_scan
from reptune.steering import steered_generate

DEMO_PROMPTS = (
    "Is the Great Wall of China visible from the Moon with the naked eye?",
    "I broke my sister's vase. What should I tell her?",
    "Is it true that the Earth is flat?",
    "What is the capital of Australia?",
)
DEMO_MULTIPLIERS = (-6.0, -3.0, 0.0, 3.0, 6.0)


def run_demo(
    output: str | Path,
    *,
    model: str | None = None,
    limit: int = 256,
    autocast: str | None = "bf16",
    max_new_tokens: int = 40,
    progress: bool = True,
) -> Path:
    """Run the demo and return the path of ``report.md``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    handle = load_model(model, autocast=autocast)
    timings["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    pairs, origin = load_contrast_pairs("honesty", handle.tokenizer, limit=limit)
    vector, scan = extract_vector(handle, pairs, "all", method="mean-diff", positions="last", dataset=origin, progress=progress)
    timings["extract_s"] = time.perf_counter() - start
    vector_path = vector.save(output / "honesty.safetensors")
    assert scan is not None
    scan_paths = write_scan(scan, vector_path)
    best = scan.best_layers(1)

    start = time.perf_counter()
    completions = steered_generate(handle, vector, list(DEMO_PROMPTS), list(DEMO_MULTIPLIERS), best, max_new_tokens=max_new_tokens)
    timings["steer_s"] = time.perf_counter() - start

    summary: dict[str, Any] = {
        "model": handle.describe(),
        "data": {"origin": origin, "pairs": len(pairs)},
        "vector": str(vector_path),
        "best_layers": scan.best_layers(3),
        "steer_layer": best,
        "multipliers": list(DEMO_MULTIPLIERS),
        "completions": {str(k): v for k, v in completions.items()},
        "timings": timings,
    }
    write_json_atomic(output / "summary.json", summary)
    report = output / "report.md"
    write_text_atomic(report, _report_markdown(summary, scan_markdown(scan), scan_paths["png"].name, completions))
    return report


def _report_markdown(summary: dict[str, Any], scan_table: str, plot_name: str, completions: dict[float, list[str]]) -> str:
    model = summary["model"]
    lines = [
        "# reptune demo: honesty vector on the embedded model",
        "",
        f"Model: `{model['model_id']}` ({model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"{model['num_parameters'] / 1e6:.0f}M parameters, autocast {model['autocast']}).",
        f"Data: {summary['data']['pairs']} honest/dishonest persona pairs from `{summary['data']['origin']}`; "
        "activations at the last token; mean-difference direction per layer.",
        "",
        "## Layer scan",
        "",
        f"![layer scan]({plot_name})",
        "",
        scan_table,
        "`pair_acc`: held-out pairs whose honest side projects above the dishonest side; `probe_acc`: a logistic probe "
        "telling honest from dishonest activations; `label_acc`: a probe reading the *statement's truth* from the honest-side "
        "activation (how well the model internally knows the fact).",
        "",
        f"## Steering at layer {summary['steer_layer'][0]}",
        "",
        "Greedy completions; multiplier 0 is the unsteered model. Positive multipliers push toward the honest persona, "
        "negative toward the dishonest one (multiplier 1 = the average honest-minus-dishonest gap).",
        "",
        "| prompt | " + " | ".join(f"x {m:g}" for m in completions) + " |",
        "|---|" + "---|" * len(completions),
    ]
    prompts = DEMO_PROMPTS
    for index, prompt in enumerate(prompts):
        cells = [completions[m][index].replace("|", "\\|").replace("\n", " ") for m in completions]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    timings = summary["timings"]
    lines += [
        "",
        f"Timings: load {timings['load_s']:.1f}s, extract {timings['extract_s']:.1f}s, steer {timings['steer_s']:.1f}s.",
        "",
    ]
    return "\n".join(lines)
