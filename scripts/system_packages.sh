#!/usr/bin/env bash
# The Debian packages the test suite drives as real programs: redis-server (the cluster tests
# start their own servers on free ports) and chromium (the browser tests, through Playwright).
# Installs the missing ones with apt-get as root (or through sudo); where neither is possible it
# stops at once and prints the one command that would. Debian's redis package also ships a
# system service, which nothing here needs: a temporary policy-rc.d (the standard Debian switch)
# keeps the install from starting it.
set -euo pipefail

packages=(redis-server chromium)
binaries=(redis-server chromium)

missing=()
for i in "${!packages[@]}"; do
  command -v "${binaries[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo)
  else
    echo "easel: the tests need Debian's ${missing[*]}; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "easel: the tests need ${missing[*]} (Debian packages), and this machine has no apt-get:" >&2
  echo "  install redis-server and chromium with this system's package manager" >&2
  exit 1
fi

echo "easel: installing Debian's ${missing[*]} for the tests (first run)" >&2
policy=/usr/sbin/policy-rc.d
added=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  added=1
  trap '"${sudo[@]}" rm -f "$policy"' EXIT  # also when the install fails
fi
log=$(mktemp)
if ! { "${sudo[@]}" apt-get update -qq &&
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
  >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "easel: installing ${missing[*]} failed (the lines above are apt-get's)" >&2
  exit 1
fi
rm -f "$log"
