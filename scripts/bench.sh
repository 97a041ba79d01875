#!/usr/bin/env bash
# Measures the whole product against its baselines in one run and rewrites docs/benchmarks.md:
# builds the database lacaja_bench (LA-CAJA's schema, a generated history loaded through the
# capture triggers), then the dashboard against plain SQL, growth at 1M/3M/10M sales, the POS
# write path with and without the extension, a bulk load, freshness against REFRESH
# MATERIALIZED VIEW CONCURRENTLY, backfill time and sizes.
#   scripts/bench.sh --sales 10M       the headline (about an hour on 2 cores)
#   scripts/bench.sh --sales 1M        the default
#   scripts/bench.sh --sales 100k      a quick run (CI runs it with --output, not asserting timings)
# Other options: --stores N --days N --duration SECONDS --runs N --output FILE.
# Sections of their own: --events N, --compression N, --streaming N, --anomalies, --forecast, --warehouse N.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PROFILE=release scripts/install.sh
scripts/redis.sh start  # for --streaming
eval "$(scripts/pg.sh env)"
export LACAJA_BENCH_SERVER="host=$PGHOST port=$PGPORT user=$PGUSER"
cargo run --release --quiet -p lacaja-bench -- "$@"
