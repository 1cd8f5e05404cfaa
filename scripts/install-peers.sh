#!/usr/bin/env bash
# Installs the real peers the tests run against: Debian packages listed in scripts/apt-packages.txt,
# then every scripts/build-*.sh (e.g. the govmomi simulator launcher). Idempotent; needs root or sudo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^\s*$/d' "$here/apt-packages.txt")
if ((${#pkgs[@]})); then
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
shopt -s nullglob
for build in "$here"/build-*.sh; do
  bash "$build"
done
