#!/usr/bin/env bash
# Install checkov (PyPI) into its own virtual environment, .cache/checkov/, for the chart's
# security scan (tests/chart/test_scan.py). kube-linter, the other scanner the project would use,
# cannot be built here: the Go module proxy answers 403 for golang.stackrox.io/kube-linter.
#
# A venv of its own: checkov pins boto3, pydantic-era libraries and more that would fight the
# project's ranges. About 300 MB and 2-4 minutes cold. Usage: scripts/install-checkov.sh [--force]
set -euo pipefail

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cache/checkov"
python="${PYTHON:-python3}"

# One install at a time: test runs in parallel sessions may all find it missing.
mkdir -p "$root/.cache"
exec 9>"$root/.cache/.install-checkov.lock"
flock 9

if [[ "${1:-}" != "--force" && -x "$venv/bin/checkov" ]] \
   && [[ "$("$venv/bin/checkov" --version 2>/dev/null)" == "$CHECKOV_VERSION" ]]; then
  exit 0
fi
echo "install-checkov: checkov ${CHECKOV_VERSION} -> ${venv}" >&2
start=$(date +%s)
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}"
echo "install-checkov: installed $("$venv/bin/checkov" --version) in $(( $(date +%s) - start ))s" >&2
