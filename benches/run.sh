#!/usr/bin/env bash
# Benchmarks, figures only (nothing here asserts a speed): builds the static release binaries,
# then measures the x86_64 one over loopback against the fake WeCom server:
#   intake    wrk at 1/16/64 connections, 1- and 50-alert payloads, duplicate and new; RSS;
#             start-up to the first 200
#   burst     1,000 alerts: messages, bytes per message, time to drain
#   slowloris RSS and latency while 1,000 connections hang
# Needs wrk (installed with apt when missing). BENCH_SECONDS sets each wrk run (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
packaging/build-static.sh
version=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"weixin-robot","version":"\([^"]*\)".*/\1/p')
export WEIXIN_ROBOT_BIN="$PWD/dist/weixin-robot-$version-x86_64-unknown-linux-musl"
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
echo "binary sizes:"
for f in dist/weixin-robot-"$version"-*-unknown-linux-musl; do echo "  $f: $(stat -c %s "$f") bytes"; done
cargo bench --locked --bench intake
cargo bench --locked --bench burst
cargo bench --locked --bench slowloris
