#!/usr/bin/env bash
# Builds lacaja_analytics and installs it into the system PostgreSQL 15, then (re)starts the
# local cluster so the preloaded library is the one just built.  PROFILE=release|debug.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
flag=(); [ "$PROFILE" = release ] && flag=(--release)
lib=/usr/lib/postgresql/15/lib/lacaja_analytics.so
before=$(md5sum "$lib" 2>/dev/null || echo none)
cargo pgrx install "${flag[@]}" --pg-config /usr/lib/postgresql/15/bin/pg_config >/tmp/lacaja_install.log 2>&1 \
  || { tail -40 /tmp/lacaja_install.log; exit 1; }
after=$(md5sum "$lib")
if [ "$before" != "$after" ]; then scripts/pg.sh restart; else scripts/pg.sh start; fi
