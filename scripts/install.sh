#!/usr/bin/env bash
# Builds lacaja_analytics, installs it into the system PostgreSQL 15 and (re)starts the local
# cluster so that the preloaded library is the one just built.  PROFILE=release|debug.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
flag=(); [ "$PROFILE" = debug ] && flag=(--debug)
# Build first, while the server keeps running; then swap the files with the server stopped
# (overwriting a shared library that running backends have mapped can crash them).
cargo pgrx package "${flag[@]}" --pg-config /usr/lib/postgresql/15/bin/pg_config --out-dir target/lacaja-package \
  >/tmp/lacaja_install.log 2>&1 || { tail -40 /tmp/lacaja_install.log; exit 1; }
scripts/pg.sh stop
cp -r target/lacaja-package/usr/. /usr/
scripts/pg.sh start
