#!/usr/bin/env bash
# Install (once) and run reptune's main job on the embedded model. Extra arguments go to `reptune demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "$root/.venv/bin/reptune" demo "$@"
