#!/usr/bin/env bash
# Build the e2e control plane from Go modules pinned in e2e/go.mod and e2e/kwok/go.mod:
#   kube-apiserver, kube-controller-manager (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3),
#   kwok (sigs.k8s.io/kwok).
# Binaries go to $E2E_BIN (default <repo>/.cache/e2e/bin, git-ignored). A binary whose stamp
# matches the pinned version is not rebuilt, so a second run costs nothing.
# Usage: e2e/build.sh [component...]   (default: all four)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin="${E2E_BIN:-$repo/.cache/e2e/bin}"
mkdir -p "$bin"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--trimpath}"
# Two cores are the norm here; more parallel compiles only thrash memory.
par="${E2E_BUILD_PARALLEL:-2}"

modver() { # modver <dir> <module> -> version pinned in that go.mod
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

k8s_ver="$(modver "$here" k8s.io/kubernetes)"
etcd_ver="$(modver "$here" go.etcd.io/etcd/server/v3)"
kwok_ver="$(modver "$here/kwok" sigs.k8s.io/kwok)"

k8s_ldflags() {
  local v="$k8s_ver" major minor
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "-s -w$f"
}

build() { # build <name> <module dir> <package> <version> <ldflags>
  local name="$1" dir="$2" pkg="$3" ver="$4" ldflags="$5"
  local stamp="$bin/.$name.version"
  if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$pkg@$ver" ]]; then
    echo "$name $ver: cached"
    return
  fi
  echo "$name $ver: building $pkg"
  local t0=$SECONDS
  (cd "$dir" && go build -p "$par" -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "$pkg@$ver" > "$stamp"
  echo "$name $ver: built in $((SECONDS - t0))s"
}

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(etcd kube-apiserver kube-controller-manager kwok)
for c in "${want[@]}"; do
  case "$c" in
    etcd) build etcd "$here" go.etcd.io/etcd/server/v3 "$etcd_ver" "-s -w" ;;
    kube-apiserver) build kube-apiserver "$here" k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ver" "$(k8s_ldflags)" ;;
    kube-controller-manager) build kube-controller-manager "$here" k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ver" "$(k8s_ldflags)" ;;
    kwok) build kwok "$here/kwok" sigs.k8s.io/kwok/cmd/kwok "$kwok_ver" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_ver" ;;
    *) echo "unknown component: $c" >&2; exit 2 ;;
  esac
done
