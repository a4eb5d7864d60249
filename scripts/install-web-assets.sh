#!/bin/sh
# The web app's third-party assets (htmx, lightweight-charts, axe-core for the browser tests),
# pinned in package-lock.json and installed into ./node_modules, which the app serves.
set -eu
cd "$(dirname "$0")/.."
stamp=node_modules/.cnop-installed
if [ -f "$stamp" ] && [ "$stamp" -nt package-lock.json ] && [ "$stamp" -nt package.json ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: the web assets need Node.js (apt-get install -y nodejs npm)" >&2
  exit 1
fi
if [ -f package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
else
  npm install --ignore-scripts --no-audit --no-fund --loglevel=error
fi
touch "$stamp"
