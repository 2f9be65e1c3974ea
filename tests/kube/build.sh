#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd for the cluster tests from the Go
# modules pinned in tests/kube/go.mod, into a cache outside git that is
# reused while the pinned version stays the same:
#   ${CREDITS_KUBE_CACHE:-$HOME/.cache/credit-operator/kube}/<version>/
# Prints that directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$here/go.mod")
[ -n "$version" ] || { echo "tests/kube/go.mod names no k8s.io/kubernetes version" >&2; exit 1; }
etcd_version=$(awk '{ if ($1 == "require") { $1 = ""; $0 = $0 } } $1 == "go.etcd.io/etcd/server/v3" {print $2}' "$here/go.mod")
out="${CREDITS_KUBE_CACHE:-$HOME/.cache/credit-operator/kube}/$version-etcd-$etcd_version"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kubectl" ] && [ -x "$out/etcd" ]; then
    echo "$out"
    exit 0
fi
command -v go > /dev/null || { echo "go is not installed: cannot build kube-apiserver" >&2; exit 1; }
mkdir -p "$out.partial"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/client-go/pkg/version.gitVersion=$version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
cd "$here"
start=$(date +%s)
echo "building kube-apiserver, kubectl $version and etcd $etcd_version into $out (cold: several minutes)" >&2
go build -trimpath -ldflags "$ldflags" -o "$out.partial/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -ldflags "$ldflags" -o "$out.partial/kubectl" k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" ./etcd
rm -rf "$out"
mv "$out.partial" "$out"
echo "built in $(( $(date +%s) - start )) s" >&2
echo "$out"
