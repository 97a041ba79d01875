#!/usr/bin/env bash
# A local redis-server for the streaming tests and benchmarks (Debian's, installed by setup.sh),
# on 127.0.0.1 only. Usage: scripts/redis.sh start|stop|url
# Settings: LACAJA_REDIS_PORT (default 56379). Data in /var/tmp/lacaja_analytics/redis: a
# SHUTDOWN SAVE keeps the streams across a restart (the tests stop Redis mid-burst).
set -euo pipefail

PORT=${LACAJA_REDIS_PORT:-56379}
DIR=/var/tmp/lacaja_analytics/redis

running() {
  redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1
}

start() {
  running && return 0
  mkdir -p "$DIR"
  redis-server --bind 127.0.0.1 --port "$PORT" --dir "$DIR" --save "" --appendonly no \
               --daemonize yes --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid"
  for _ in $(seq 50); do running && return 0; sleep 0.1; done
  echo "redis-server did not start on port $PORT (see $DIR/redis.log)" >&2
  exit 1
}

stop() {
  running && redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "redis://127.0.0.1:$PORT" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
