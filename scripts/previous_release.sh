#!/usr/bin/env bash
# The previous release, for the upgrade test: builds it from its git tag or the commit
# scripts/releases records for it (PREVIOUS_RELEASE, default v0.1.0; once, kept in
# target/previous-release/), installs it into the local cluster, and builds the database lacaja_upgrade on it: the demo's data, the extension at that version
# with what a user sets up (zones, compatibility views, hypertables, policies, the warehouse)
# and a snapshot of its figures. scripts/test.sh then installs the current build and
# tests/upgrade.rs runs ALTER EXTENSION lacaja_analytics UPDATE there.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${PREVIOUS_RELEASE:-v0.1.0}
ROOT=$PWD
BUILD=$ROOT/target/previous-release/$TAG

# The tag where the clone has it, else the commit scripts/releases records for it (a clone of
# the branch alone has no tags); a shallow clone is deepened to reach it.
has_commit() { git cat-file -e "$1^{commit}" 2>/dev/null; }
SOURCE=
if has_commit "refs/tags/$TAG"; then
  SOURCE=refs/tags/$TAG
else
  recorded=$(awk -v tag="$TAG" '$1 == tag { print $2 }' scripts/releases)
  if [ -n "$recorded" ] && ! has_commit "$recorded" && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    git fetch --quiet --unshallow origin 2>/dev/null || true
  fi
  if [ -n "$recorded" ] && has_commit "$recorded"; then
    SOURCE=$recorded
  fi
fi
if [ -z "$SOURCE" ]; then
  echo "previous release $TAG: neither its tag nor the commit scripts/releases records for it is in this clone;" \
       "fetch the repository's history and tags (git fetch --tags --unshallow) or set PREVIOUS_RELEASE" >&2
  exit 1
fi

if [ ! -f "$BUILD/package.done" ]; then
  echo "==> build the previous release $TAG (from $SOURCE)"
  rm -rf "$BUILD"
  mkdir -p "$BUILD/tree"
  git archive "$SOURCE" | tar -x -C "$BUILD/tree"
  # A target directory of its own: sharing one, the current build's library could be taken
  # for fresh while the old one sits where cargo puts it.
  (cd "$BUILD/tree" && CARGO_TARGET_DIR="$BUILD/target" cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config \
     --out-dir "$BUILD/package" >"$BUILD/build.log" 2>&1) || { tail -40 "$BUILD/build.log"; exit 1; }
  touch "$BUILD/package.done"
fi

echo "==> install $TAG into the local cluster"
scripts/pg.sh stop
cp -r "$BUILD/package/usr/." /usr/
scripts/pg.sh start
eval "$(scripts/pg.sh env)"; export PGHOST PGPORT PGUSER
version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$BUILD/package/usr/share/postgresql/15/extension/lacaja_analytics.control")

echo "==> database lacaja_upgrade: the demo's data on lacaja_analytics $version"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS lacaja_upgrade WITH (FORCE)" -c "CREATE DATABASE lacaja_upgrade"
q() { psql -X -q -v ON_ERROR_STOP=1 -d lacaja_upgrade "$@"; }
q -f sql/fixtures/lacaja_schema.sql
q -v days=14 -f demo/generate.sql >/dev/null
q -f sql/fixtures/lacaja_materialized_views.sql
q -v version="$version" -f tests/sql/upgrade_setup.sql >/dev/null
