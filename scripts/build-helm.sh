#!/usr/bin/env bash
# Build helm from its Go module into .cache/bin/helm (no registry ships a helm binary here).
#
# Reuses Go's module and build caches, so a second build (or a rebuild after `make clean`)
# takes seconds; a cold one a few minutes on two cores. Usage: scripts/build-helm.sh [--force]
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Kubernetes version that `helm template` and `helm lint` assume without a cluster: the
# client-go minor of this helm release (helm's own Makefile sets it the same way).
K8S_MAJOR=1
K8S_MINOR=37

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/bin"
out="$bin/helm"

# One build at a time: test runs in parallel sessions may all find the binary missing.
mkdir -p "$root/.cache"
exec 9>"$root/.cache/.build-helm.lock"
flock 9

if [[ "${1:-}" != "--force" && -x "$out" ]] && "$out" version --short 2>/dev/null | grep -q "^${HELM_VERSION}+"; then
  exit 0
fi
command -v go >/dev/null || { echo "build-helm: 'go' is not on PATH; install Go >= 1.26" >&2; exit 2; }

mkdir -p "$bin"
ldflags="-w -s"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata=onnxship"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X ${pkg}.k8sVersionMajor=${K8S_MAJOR} -X ${pkg}.k8sVersionMinor=${K8S_MINOR}"
done

echo "build-helm: go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION} -> ${out}" >&2
start=$(date +%s)
CGO_ENABLED=0 GOBIN="$bin" GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
echo "build-helm: built $("$out" version --short) in $(( $(date +%s) - start ))s" >&2
