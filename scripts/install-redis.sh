#!/bin/sh
# Debian's redis-server for the shared-state tests (the suite starts its own on a free 127.0.0.1
# port, keeping nothing on disk). Does nothing when redis-server is already on PATH.
set -eu
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "redis-server is missing: run 'apt-get install -y redis-server' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package starts a system-wide server where an init system runs; the tests never use it.
redis-server --version
