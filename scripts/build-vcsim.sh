#!/usr/bin/env bash
# Builds the govmomi simulator launcher (tests/vcsim/main.go) into tests/vcsim/vcsim, in GOPATH mode
# against Debian's golang-github-vmware-govmomi-dev. Skips the build when the binary is newer than
# its source. Needs the apt packages golang-go and golang-github-vmware-govmomi-dev.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/tests/vcsim"
bin="$src/vcsim"
if [[ -x "$bin" ]] && [[ -z $(find "$src" -maxdepth 1 -name '*.go' -newer "$bin") ]]; then
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "build-vcsim: 'go' not found: install golang-go (see scripts/apt-packages.txt)" >&2
  exit 1
fi
if [[ ! -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]]; then
  echo "build-vcsim: govmomi sources missing: install golang-github-vmware-govmomi-dev" >&2
  exit 1
fi
cache=${GOCACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/go-build}
cd "$src"
GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE="$cache" go build -o "$bin.tmp" .
mv "$bin.tmp" "$bin"
echo "built $bin"
