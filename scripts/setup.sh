#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (as root) to build, install and test lacaja_analytics.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail

PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo redis-server; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "==> cargo install cargo-pgrx $PGRX_VERSION (about 5 minutes)"
  cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
fi

if [ ! -f "$HOME/.pgrx/config.toml" ]; then
  echo "==> cargo pgrx init --pg15"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi
