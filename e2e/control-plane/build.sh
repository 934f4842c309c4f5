#!/usr/bin/env bash
# Find or build the Kubernetes control-plane binaries the e2e suite runs as local processes:
# kube-apiserver, kube-controller-manager, kube-scheduler (and etcd).
#
# Prints the directory that holds all four. Looked up in this order:
#   1. $KUBEBUILDER_ASSETS (setup-envtest's layout), when it holds all four at 1.20.x
#      (setup-envtest itself ships no controller-manager or scheduler);
#   2. $PATH, when all four are on it, at 1.20.x (the flags here are 1.20's);
#   3. the cache, $FUNCSCALE_CP_CACHE (default ~/.cache/funcscale/control-plane/<version>);
#   4. otherwise built into the cache from Debian's `kubernetes` source package (bookworm,
#      1.20.2, Go dependencies vendored) with Debian's golang-go, the way debian/rules builds it,
#      plus the fixes that source needs with Go 1.19 (below). About 5 minutes on 2 cores, once
#      per machine. etcd comes from Debian's etcd-server package. Needs root for apt-get.
#
# Progress goes to stderr; the directory is the only thing on stdout.
set -euo pipefail

VERSION=1.20.2
CACHE=${FUNCSCALE_CP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/funcscale/control-plane/$VERSION}
BINS=(kube-apiserver kube-controller-manager kube-scheduler)
say() { echo "control-plane: $*" >&2; }

has_all() { # dir: all four there, and the API server is the version the scripts' flags are for
  local d=$1
  for b in "${BINS[@]}" etcd; do [ -x "$d/$b" ] || return 1; done
  "$d/kube-apiserver" --version 2>/dev/null | grep -q "v${VERSION%.*}\." || {
    say "ignoring $d: not kube-apiserver ${VERSION%.*}.x"; return 1; }
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && has_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi
if p=$(command -v kube-apiserver 2>/dev/null) && has_all "$(dirname "$p")"; then
  dirname "$p"; exit 0
fi
if has_all "$CACHE/bin"; then
  echo "$CACHE/bin"; exit 0
fi

# ---- build once into the cache ---------------------------------------------------------------
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9                                       # one build at a time; a waiting run reuses it
if has_all "$CACHE/bin"; then echo "$CACHE/bin"; exit 0; fi

PKGS=(golang-go etcd-server dpkg-dev
      golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
      golang-github-modern-go-concurrent-dev)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
SRC_LIST=/etc/apt/sources.list.d/funcscale-deb-src.sources
need_src=1
ls "$CACHE"/src/kubernetes-*/go.mod >/dev/null 2>&1 && need_src=0
if [ ${#missing[@]} -gt 0 ] || [ $need_src = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "needs root to install ${missing[*]:-} and fetch the kubernetes source (apt-get);"
    say "or set KUBEBUILDER_ASSETS to a directory with ${BINS[*]} and etcd"
    exit 1
  fi
  if [ $need_src = 1 ] && ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ \
       && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    say "adding a deb-src line for bookworm main ($SRC_LIST)"
    cat >"$SRC_LIST" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  say "apt-get update"
  apt-get update -q >&2
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  fi
fi

if [ $need_src = 1 ]; then
  say "fetching Debian's kubernetes source package"
  rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
  (cd "$CACHE/src" && apt-get source -q kubernetes >&2)
fi
SRC=$(dirname "$(ls "$CACHE"/src/kubernetes-*/go.mod | head -1)")

# Fixes the 1.20.2 source needs when built with Go 1.19:
# (a) vendored modern-go/reflect2 1.0.1 crashes the apiserver (SIGSEGV in map iteration):
#     replace it, json-iterator and modern-go/concurrent with Debian's current packages.
for m in github.com/modern-go/reflect2 github.com/modern-go/concurrent github.com/json-iterator/go; do
  rm -rf "$SRC/vendor/$m"
  cp -r "/usr/share/gocode/src/$m" "$SRC/vendor/$m"
  find "$SRC/vendor/$m" -name '*_test.go' -delete
done
# (b) an empty string in a custom resource is rejected as null: the OpenAPI type check treats
#     a value equal to its type's zero value as null, and Go 1.19 makes that true for "".
for f in vendor/github.com/go-openapi/validate/type.go vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go; do
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$SRC/$f"
  grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$SRC/$f" && { say "patch (b) did not apply to $f"; exit 1; }
done

say "building ${BINS[*]} $VERSION (about 5 minutes on 2 cores; log: $CACHE/build.log)"
(
  cd "$SRC"
  export GOPATH="$SRC/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=off HOME="$CACHE/home"
  export PATH="/usr/lib/go/bin:$PATH"
  mkdir -p .go/src/k8s.io "$HOME"
  [ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
) >"$CACHE/build.log" 2>&1 &
pid=$!
start=$SECONDS
while kill -0 $pid 2>/dev/null; do
  sleep 15
  kill -0 $pid 2>/dev/null && say "still building ($((SECONDS - start)) s) ..."
done
wait $pid || { say "build failed; last lines of $CACHE/build.log:"; tail -30 "$CACHE/build.log" >&2; exit 1; }

mkdir -p "$CACHE/bin.tmp"
for b in "${BINS[@]}"; do cp "$SRC/_output/bin/$b" "$CACHE/bin.tmp/$b"; done
ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$CACHE/bin.tmp/etcd"
rm -rf "$CACHE/bin" && mv "$CACHE/bin.tmp" "$CACHE/bin"
say "built in $((SECONDS - start)) s: $CACHE/bin"
echo "$CACHE/bin"
