#!/usr/bin/env bash
# Build llama.cpp from PyPI source into .venv/llama.cpp at the project root: the llama.cpp tree
# vendored in the llama-cpp-python sdist (pinned below), compiled with CMake into
# .venv/llama.cpp/bin/{llama-server,llama-completion}; .venv/llama.cpp/src keeps the tree, whose
# convert_hf_to_gguf.py `reptune export-model` runs. Optional: not run by CI; the llama.cpp tests
# skip without it. Idempotent: a second run with this script unchanged returns at once.
# Environment: JOBS (parallel compile jobs, default 2), LLAMA_CPP_PYTHON_VERSION (default below).
# The build is portable across x86-64 CPUs with AVX2 (GGML_NATIVE=OFF): a cached build made on an
# AVX-512 machine still runs on an AVX2-only one. Needs cmake, a C++17 compiler and pip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.venv/llama.cpp"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
jobs="${JOBS:-2}"
stamp="$dest/.reptune-llamacpp-stamp"
want="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)-$version"
step() { echo "setup-llamacpp: $*" >&2; }
if [[ -x "$dest/bin/llama-server" && -x "$dest/bin/llama-completion" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  step "$dest is up to date (llama.cpp from llama-cpp-python $version)"
  exit 0
fi
for tool in cmake c++ tar; do
  command -v "$tool" >/dev/null || { step "needs $tool on PATH"; exit 2; }
done
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
start=$SECONDS
mkdir -p "$dest/dl"
sdist="$dest/dl/llama_cpp_python-$version.tar.gz"
if [[ ! -f "$sdist" ]]; then
  step "downloading the llama-cpp-python $version sdist (its vendored llama.cpp source) from PyPI"
  "$python" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dest/dl" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  [[ "${PIPESTATUS[0]}" == 0 ]] || { step "pip download failed"; exit 1; }
fi
if [[ ! -f "$dest/src/.version" || "$(cat "$dest/src/.version")" != "$version" ]]; then
  step "unpacking vendor/llama.cpp into $dest/src"
  rm -rf "$dest/src" "$dest/build"
  tmp="$(mktemp -d "$dest/.unpack.XXXXXX")"
  tar -xzf "$sdist" -C "$tmp" "llama_cpp_python-$version/vendor/llama.cpp"
  mv "$tmp/llama_cpp_python-$version/vendor/llama.cpp" "$dest/src"
  rm -rf "$tmp"
  sed -n 's/^- feat: update llama.cpp to \(.*\)$/\1/p' <(tar -xzOf "$sdist" "llama_cpp_python-$version/CHANGELOG.md") \
    | head -n1 > "$dest/src/.upstream-commit" || true
  echo "$version" > "$dest/src/.version"
fi
# SIMD level: AVX2/FMA/F16C where the CPU has them (every x86-64 server of the last decade),
# otherwise ggml's plain x86-64 code; never -march=native, so the cache survives a CPU change.
simd=(-DGGML_NATIVE=OFF)
if [[ "$(uname -m)" == "x86_64" ]]; then
  if grep -qw avx2 /proc/cpuinfo; then
    simd+=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
  else
    simd+=(-DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF)
  fi
fi
step "configuring (CMake, Release, static, CPU only, no web UI, no network: ${simd[*]})"
cmake -S "$dest/src" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DGGML_OPENMP=ON -DGGML_CCACHE=OFF "${simd[@]}" >"$dest/cmake-configure.log" 2>&1 \
  || { step "configure failed; see $dest/cmake-configure.log"; tail -n 20 "$dest/cmake-configure.log" >&2; exit 1; }
step "compiling llama-server and llama-completion with $jobs jobs (10-25 minutes on 2 cores on first run; log: $dest/build.log)"
cmake --build "$dest/build" --config Release -j "$jobs" --target llama-server llama-completion >"$dest/build.log" 2>&1 \
  || { step "build failed; see $dest/build.log"; tail -n 30 "$dest/build.log" >&2; exit 1; }
mkdir -p "$dest/bin"
for binary in llama-server llama-completion; do
  install -m 0755 "$dest/build/bin/$binary" "$dest/bin/$binary"
done
"$dest/bin/llama-completion" --version >&2 2>&1 || true
echo "$want" > "$stamp"
step "done in $((SECONDS - start)) s: $dest/bin/llama-server, $dest/bin/llama-completion, $dest/src/convert_hf_to_gguf.py"
