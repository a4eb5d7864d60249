#!/usr/bin/env bash
# Installs what `make bench` needs beyond the venv: wrk (Debian package) and taskset (util-linux).
set -euo pipefail
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -eq 0 ]; then
  echo "bench tools: $(wrk -v 2>&1 | head -n1)"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing ${missing[*]}: install them with apt-get (as root)" >&2
  exit 1
fi
echo "bench tools: $(wrk -v 2>&1 | head -n1)"
