"""Fuzzing the CLI's file arguments: every broken file is one ``error:`` line, exit 2, nothing written.

Hypothesis generates at least 200 inputs: random bytes, truncated valid files, and valid files with
wrong-typed fields (pair JSONL records, statement CSVs, experiment YAML, safetensors vector
headers, results JSON, prompt lists). Each goes to the command that reads that kind of file, in
process, on the tiny model; the model must never load (every file is read before it), so one
example costs milliseconds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MIN_EXAMPLES = 200

VALID_PAIRS = "".join(
    json.dumps({"positive": f"The sky is blue {i}.", "negative": f"The sky is green {i}.", "label": i % 2}) + "\n" for i in range(4)
)
VALID_CSV = "statement,label\n" + "".join(f"The sky is blue {i}.,{i % 2}\n" for i in range(4))
VALID_PROMPTS = json.dumps({"prompts": ["How do I pick a lock?", "Is the sky green?"]})
VALID_RESULTS = json.dumps({"format": "reptune-experiment/1", "name": "x", "claims": [], "headline": {"rows": []}})
VALID_EVAL = json.dumps({"format": "reptune-eval/1", "tasks": {}})

# wrong JSON values, and what each field accepts (a value of an accepted type is filtered out)
WRONG = st.one_of(st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6), st.none(),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans())
META_ACCEPTS: dict[str, tuple[type, ...]] = {
    "model_id": (str,), "hidden_size": (int,), "num_layers": (int,), "method": (str,), "positions": (str,), "normalization": (str,),
    "revision": (str, type(None)), "dataset": (str, type(None)), "num_pairs": (int, type(None)), "format_version": (int,), "extra": (dict,),
}
RESULT_ACCEPTS = {"claims": list, "headline": dict, "scores": dict, "seeds": list, "model": dict, "skipped": list, "training": dict, "conditions": list}
# experiment keys with values that can never validate
YAML_WRONG: list[tuple[str, list[Any]]] = [
    ("seeds", ["x", [], [1, 1], {"a": 1}]),
    ("train.steps", ["many", -1, 0, [3], 2.5]),
    ("train.lr", ["fast", -1.0, 0, [1e-4]]),
    ("variants", ["truth", [{"name": "x"}], [{"preset": "truth"}], [{"name": "a b", "preset": "truth"}]]),
    ("evaluation.tasks", ["facts-ab", [5], ["no-such-task"]]),
    ("sweep.multipliers", [[1, 2], [-1], "x"]),
    ("name", [5, "../x", [], ".hidden"]),
    ("precision", ["fp64", 16]),
    ("zz_unknown", [1, "x"]),
    ("trust_remote_code", [True]),
]


def _is_accepted(value: Any, accepts: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return False  # a JSON boolean is never a number, string or object here
    return isinstance(value, accepts) and not (int in accepts and isinstance(value, int) and value < 1)


def _cut(text: str, data: st.DataObject) -> str:
    """``text`` cut strictly inside one of its lines (so the last line is always incomplete)."""
    cuts = [i for i in range(len(text)) if text[i] != "\n" and (i == 0 or text[i - 1] != "\n")]
    return text[: data.draw(st.sampled_from(cuts), label="cut")]


def _vector_bytes(meta: dict[str, Any] | str) -> bytes:
    import torch
    from safetensors.torch import save

    header = meta if isinstance(meta, str) else json.dumps(meta)
    return save({"layer.1": torch.ones(32)}, metadata={"reptune": header})


GOOD_META = {"model_id": "x", "hidden_size": 32, "num_layers": 4, "site": "block_output"}


@st.composite
def cases(draw: Any) -> tuple[str, str, bytes]:
    """(file kind, how it was broken, content)."""
    kind = draw(st.sampled_from(["pairs", "csv", "yaml", "vector", "results", "prompts", "eval"]))
    how = draw(st.sampled_from(["bytes", "truncated", "types"]))
    data = draw(st.data())
    if how == "bytes":
        content = draw(st.binary(max_size=200))
        if kind == "yaml":
            content = b"- " + content  # a YAML list (or garbage) is never a valid experiment
        if kind == "csv":
            content = b"\xff" + content  # never valid UTF-8, so never a valid statements file
        return kind, how, content
    if how == "truncated":
        valid = {"pairs": VALID_PAIRS, "csv": VALID_CSV, "results": VALID_RESULTS, "prompts": VALID_PROMPTS, "eval": VALID_EVAL}
        if kind == "vector":
            blob = _vector_bytes(GOOD_META)
            return kind, how, blob[: draw(st.integers(0, len(blob) - 1))]
        if kind == "yaml":  # a truncated YAML can stay valid: break its structure instead
            return kind, how, b"name: tiny\ntrain: {steps: 3\n"
        text = valid[kind]
        return kind, how, _cut(text, data).encode() if kind in {"pairs", "csv"} else text[: draw(st.integers(0, len(text) - 1))].encode()
    # wrong types in an otherwise well-formed file
    if kind == "pairs":
        field = draw(st.sampled_from(["positive", "negative", "label", "meta"]))
        value = draw(WRONG.filter(lambda v: not (field in {"positive", "negative"} and isinstance(v, str) and v)
                                  and not (field == "label" and (v is None or str(v).strip().lower() in {"0", "1", "true", "false", "1.0", "0.0", "yes", "no"}))
                                  and not (field == "meta" and (isinstance(v, dict) or not v))))
        record = {"positive": "a", "negative": "b", field: value}
        return kind, how, (json.dumps(record) + "\n").encode()
    if kind == "csv":
        label = draw(st.text(min_size=1, max_size=5).filter(lambda t: t.strip().lower() not in {"0", "1", "true", "false", "1.0", "0.0", "yes", "no"}
                                                             and "\n" not in t and "\r" not in t and "," not in t and '"' not in t))
        return kind, how, f"statement,label\nThe sky is blue.,{label}\n".encode()
    if kind == "yaml":
        key, values = draw(st.sampled_from(YAML_WRONG))
        node: Any = draw(st.sampled_from(values))
        for part in reversed(key.split(".")):
            node = {part: node}
        import yaml

        return kind, how, yaml.safe_dump(node).encode()
    if kind == "vector":
        field = draw(st.sampled_from(sorted(META_ACCEPTS)))
        value = draw(WRONG.filter(lambda v: not _is_accepted(v, META_ACCEPTS[field])))
        if draw(st.booleans()):
            return kind, how, _vector_bytes({**GOOD_META, field: value})
        return kind, how, _vector_bytes(json.dumps([GOOD_META]))  # metadata JSON that is not an object
    if kind == "results":
        field = draw(st.sampled_from(sorted(RESULT_ACCEPTS)))
        value = draw(WRONG.filter(lambda v: v is not None and not isinstance(v, RESULT_ACCEPTS[field])))
        return kind, how, json.dumps({**json.loads(VALID_RESULTS), field: value}).encode()
    if kind == "eval":
        value = draw(WRONG.filter(lambda v: not isinstance(v, dict)))
        return kind, how, json.dumps({"format": "reptune-eval/1", "tasks": value}).encode()
    value = draw(WRONG.filter(lambda v: not (isinstance(v, str) and v.strip())))
    return kind, how, json.dumps(draw(st.sampled_from([[value], {"prompts": [value]}, {"prompts": value}]))).encode()


def command_for(kind: str, path: Path, out: Path, tiny_dir: Path, variant: int) -> list[object]:
    """The command that reads a file of ``kind``; every output goes under ``out``."""
    if kind == "pairs":
        return [["extract", "--model", tiny_dir, "--data", path, "-o", out / "v.safetensors"],
                ["tune", "--model", tiny_dir, "--preset", "truth", "--data", path, "-o", out / "run"]][variant % 2]
    if kind == "csv":
        return [["extract", "--model", tiny_dir, "--data", path, "-o", out / "v.safetensors"],
                ["eval", "--model", tiny_dir, "--tasks", "facts-ab", "--data", path, "-o", out / "r.json"],
                ["tune", "--model", tiny_dir, "--preset", "truth", "--data", path, "-o", out / "run"]][variant % 3]
    if kind == "yaml":
        return ["run", path, "-o", out / "run"]
    if kind == "vector":
        return [["steer", "--model", tiny_dir, "--vector", path, "--prompt", "hi"],
                ["export-gguf", path, "-o", out / "v.gguf"],
                ["eval", "--model", tiny_dir, "--tasks", "facts-ab", "--vector", path, "-o", out / "r.json"],
                ["tune", "--model", tiny_dir, "--preset", "honesty", "--vector", path, "-o", out / "run"]][variant % 4]
    if kind == "results":
        return ["report", path.parent]
    if kind == "eval":
        return ["compare", path, path, "-o", out / "c.json"]
    return ["discover", "--model", tiny_dir, "--prompts", path, "-o", out / "d.safetensors"]


SUFFIX = {"pairs": ".jsonl", "csv": ".csv", "yaml": ".yaml", "vector": ".safetensors", "results": ".json", "prompts": ".json", "eval": ".json"}


def test_broken_files_are_one_line_errors(cli_run, tiny_dir, monkeypatch):
    from reptune import models

    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the file was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("REPTUNE_DATA_DIR", raising=False)
    seen: list[tuple[str, str]] = []

    @settings(max_examples=MIN_EXAMPLES + 40, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=cases(), variant=st.integers(0, 11))
    def one(case: tuple[str, str, bytes], variant: int) -> None:
        kind, how, content = case
        root = Path(tempfile.mkdtemp(prefix="reptune-fuzz-"))
        try:
            path = root / ("results.json" if kind == "results" else f"input{SUFFIX[kind]}")
            path.write_bytes(content)
            out = root / "out"
            result = cli_run(*command_for(kind, path, out, tiny_dir, variant))
            where = f"{kind}/{how}: {content[:120]!r}\n{result.err[-1500:]}"
            assert result.code == 2, where
            assert "Traceback" not in result.err and "Traceback" not in result.out, where
            lines = [line for line in result.err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), where
            assert not out.exists(), where
            assert sorted(p.name for p in root.iterdir()) == [path.name], where  # nothing written beside the input
            seen.append((kind, how))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    one()
    assert len(seen) >= MIN_EXAMPLES
    assert {kind for kind, _ in seen} == set(SUFFIX) and {how for _, how in seen} == {"bytes", "truncated", "types"}
