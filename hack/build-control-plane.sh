#!/usr/bin/env bash
# Builds the local control plane's binaries from their published Go modules into a cache
# outside the repository, keyed by version, and skips whatever is already there.
#
#   etcd                     a small generated module requiring go.etcd.io/etcd/server/v3
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#                            a small generated module requiring k8s.io/kubernetes, with a
#                            replace line for every staging module (read from k8s.io/kubernetes'
#                            own go.mod), the version stamped with -ldflags
#   kwok, helm               go install at their tagged versions
#   weed (SeaweedFS)         go build in a copy of its downloaded module source (its go.mod has
#                            replace directives, which `go install mod@version` refuses); the
#                            S3-compatible server of the gateway's upload tests
#
# Prints the bin directory on stdout when done. Nothing here is committed: the generated
# modules live in the cache directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${GRAFT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}"
bin="$cache/bin"
mkdir -p "$bin"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

# have NAME VERSION: the binary for this version is already built.
have() { [ -x "$bin/$1-$2" ]; }
link() { ln -sf "$1-$2" "$bin/$1"; }

build_etcd() {
  have etcd "$ETCD_VERSION" && { link etcd "$ETCD_VERSION"; return; }
  log "building etcd $ETCD_VERSION"
  local mod="$cache/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<GOMOD
module graft.dev/hack/etcd

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
  cat >"$mod/main.go" <<'GO'
// Command etcd runs etcd's own server entrypoint; it exists so etcd can be built from its
// published server module with plain `go build`.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$mod" && go mod tidy >&2 && go build -trimpath -o "$bin/etcd-$ETCD_VERSION" .)
  link etcd "$ETCD_VERSION"
}

build_kube() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local missing=()
  for c in "${cmds[@]}"; do have "$c" "$KUBE_VERSION" || missing+=("$c"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "building ${missing[*]} $KUBE_VERSION"
    local mod="$cache/src/kubernetes-$KUBE_VERSION"
    local staging="v0.${KUBE_VERSION#v1.}"
    mkdir -p "$mod"
    local upstream_mod
    upstream_mod="$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
      printf 'module graft.dev/hack/kubernetes\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBE_VERSION"
      # Every `k8s.io/x => ./staging/src/k8s.io/x` line becomes `k8s.io/x => k8s.io/x v0.N.P`.
      sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/[a-z0-9-]*$#\1#p' "$upstream_mod" |
        while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
      printf ')\n'
    } >"$mod/go.mod"
    cat >"$mod/tools.go" <<'GO'
//go:build tools

// Package tools pins the Kubernetes commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    (cd "$mod" && go mod tidy >&2)
    local major minor
    major="${KUBE_VERSION#v}"; major="${major%%.*}"
    minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
    local ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
      ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    for c in "${missing[@]}"; do
      log "  go build $c"
      (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$bin/$c-$KUBE_VERSION" "k8s.io/kubernetes/cmd/$c")
    done
  fi
  for c in "${cmds[@]}"; do link "$c" "$KUBE_VERSION"; done
}

# go_install NAME MODULE/PKG VERSION LDFLAGS
go_install() {
  local name="$1" pkg="$2" version="$3" ld="$4"
  have "$name" "$version" && { link "$name" "$version"; return; }
  log "building $name $version"
  local gobin="$cache/gobin-$name-$version"
  GOBIN="$gobin" go install -trimpath -ldflags "$ld" "$pkg@$version"
  mv "$gobin/$name" "$bin/$name-$version"
  rmdir "$gobin"
  link "$name" "$version"
}

build_seaweedfs() {
  have weed "$SEAWEEDFS_VERSION" && { link weed "$SEAWEEDFS_VERSION"; return; }
  log "building weed (SeaweedFS) $SEAWEEDFS_VERSION"
  local src="$cache/src/seaweedfs-$SEAWEEDFS_VERSION" dir
  dir="$(cd "$cache" && go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  [ -n "$dir" ] || { log "go mod download found no source for seaweedfs $SEAWEEDFS_VERSION"; exit 1; }
  rm -rf "$src"
  mkdir -p "$cache/src"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"  # copied read-only from the module cache; writable, so rm -rf can remove it
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$bin/weed-$SEAWEEDFS_VERSION" ./weed)
  rm -rf "$src"
  link weed "$SEAWEEDFS_VERSION"
}

build_etcd
build_kube
build_seaweedfs
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
echo "$bin"
