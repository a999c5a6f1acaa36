"""Serving tuned models and vectors in the engines users deploy: llama.cpp and vLLM.

* :mod:`reptune.serving.llamacpp` — export a tuned model directory to GGUF with llama.cpp's own
  converter (``reptune export-model``), find a llama.cpp build, and run ``llama-server`` on
  127.0.0.1 (greedy completions, top log-probs, control vectors) for checks and benchmarks;
* :mod:`reptune.serving.vllm_run` — run vLLM offline on token-id prompts and write its greedy
  tokens, top log-probs and timing as JSON (executed inside the optional ``.venv-vllm``);
* :mod:`reptune.serving.vllm_plugin` — the ``vllm.general_plugins`` entry point: a reptune vector
  added at its layers with a per-request multiplier (``SamplingParams.extra_args``).

Neither engine is a dependency of reptune: ``scripts/setup-llamacpp.sh`` and
``scripts/setup-vllm.sh`` build them, and nothing here imports vLLM at module level.
"""
