#!/usr/bin/env bash
# Benchmarks, figures only (nothing here asserts a speed). Builds the static release binaries,
# the glibc release build and the bare may_minihttp server (benches/bare.rs), then measures over
# loopback against the fake WeCom server:
#   intake    wrk at 1/16/64 connections, 1- and 50-alert payloads, duplicate and new, for the
#             static x86_64 binary and the glibc build, each figure also as a ratio to the bare
#             server measured in the same run; RSS; start-up to the first 200
#   parse     alertmanager::parse alone (instructions under callgrind when valgrind is there)
#   burst     1,000 alerts: messages, bytes per message, time to drain
#   slowloris RSS and latency while 1,000 connections hang
# BENCH_ALLOCATORS=1 also builds the static x86_64 binary with each allocator (musl's own,
# mimalloc, jemalloc; see [features] in Cargo.toml) and compares them the same way.
# Needs wrk (installed with apt when missing). BENCH_SECONDS sets each wrk run (default 5),
# BENCH_RUNS the runs per figure (median, default 3). Everything runs under `nice -n 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
n="nice -n 5"
$n packaging/build-static.sh
$n cargo build --release --locked
# The bench-only bare server: cargo prints where it put each executable (the relay's binary
# too, in no fixed order: pick the artifact named "bare").
bench_exe() {
  $n cargo bench --locked --no-run --bench "$1" --message-format=json 2>/dev/null |
    grep "\"name\":\"$1\"" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1
}
bare=$(bench_exe bare)
version=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"weixin-robot","version":"\([^"]*\)".*/\1/p')
musl="dist/weixin-robot-$version-x86_64-unknown-linux-musl"
echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
echo "binary sizes:"
for f in dist/weixin-robot-"$version"-*-unknown-linux-musl; do echo "  $f: $(stat -c %s "$f") bytes"; done

intake() { # intake "label=path ..." [ENV=VALUE ...]
  local bins=$1; shift
  echo "load before: $(uptime)"
  env WEIXIN_ROBOT_BINS="$bins" WEIXIN_ROBOT_BARE_BIN="$bare" "$@" \
    $n cargo bench --locked --bench intake
  echo "load after: $(uptime)"
}
intake "musl=$musl glibc=target/release/weixin-robot"

if [ "${BENCH_ALLOCATORS:-0}" = 1 ]; then
  # jemalloc's build runs its configure script and make.
  if ! command -v make >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make >/dev/null
  fi
  bins=""
  for alloc in system mimalloc jemalloc; do
    features=(--no-default-features)
    [ "$alloc" = system ] || features+=(--features "alloc-$alloc")
    start=$(date +%s)
    $n cargo build --release --locked --target x86_64-unknown-linux-musl "${features[@]}"
    cp target/x86_64-unknown-linux-musl/release/weixin-robot "$musl-$alloc"
    echo "$musl-$alloc: $(stat -c %s "$musl-$alloc") bytes, built in $(( $(date +%s) - start ))s"
    bins="$bins $alloc=$musl-$alloc"
  done
  intake "$bins" BENCH_NEW=0
fi

if command -v valgrind >/dev/null; then
  parse=$(bench_exe parse)
  for i in 100 200; do
    echo "parse x$i under callgrind: $(PARSE_ITERATIONS=$i valgrind --tool=callgrind \
      --callgrind-out-file=/dev/null "$parse" 2>&1 | sed -n 's/.*I *refs: *//p') instructions"
  done
  echo "(instructions per 1-alert + 50-alert parse = the difference / 100)"
else
  $n cargo bench --locked --bench parse
fi
$n cargo bench --locked --bench burst
$n cargo bench --locked --bench slowloris
if [ "${BENCH_STORM:-0}" = 1 ]; then $n python3 benches/storm.py; fi # storm mode (#15), ~14 min: see benches/storm.py
