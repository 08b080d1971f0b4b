#!/bin/bash
# Intake req/s with and without --state-dir at 1, 16 and 64 connections, every notification
# new (unique group key and fingerprint), so each one is written to the spool. Figures only.
#   benches/spool-intake.sh BINARY LABEL      (SECS sets each wrk run, default 5)
# The relay runs with --dry-run (output to /dev/null) and limits lifted so the outbox never
# answers 503. Needs wrk and curl. Used for the outbox v2 table in BENCHMARKS.md.
set -u
BIN=$1; LABEL=$2; SECS=${SECS:-5}
lua=$(mktemp --suffix=.lua /tmp/wxr-uniq.XXXXXX)
cat > "$lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local id = tostring(math.random(1, 1000000000)) .. "-" .. n
  local body = '{"version":"4","groupKey":"{}:{g=\\"' .. id .. '\\"}","status":"firing","receiver":"w","groupLabels":{"g":"' .. id .. '"},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am:9093","alerts":[{"status":"firing","labels":{"alertname":"Bench","severity":"critical","instance":"n1:9100"},"annotations":{"summary":"bench","description":"bench fp=' .. id .. '"},"startsAt":"2024-05-01T12:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"' .. id .. '"}]}'
  return wrk.format(nil, nil, nil, body)
end
LUA
for mode in spool nospool; do
  for c in 1 16 64; do
    P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    state=$(mktemp -d /tmp/wxr-bench-state.XXXX)
    extra=""; [ $mode = spool ] && extra="--state-dir $state"
    $BIN --dry-run --port $P --listen 127.0.0.1 $extra --queue-max-messages 100000000 --queue-max-bytes 64GiB --dedup-window 0s >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:$P/healthz >/dev/null && break; sleep 0.1; done
    out=$(nice wrk -t$([ $c = 1 ] && echo 1 || echo 2) -c$c -d${SECS}s --latency -s $lua http://127.0.0.1:$P/alertinfo)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    echo "$LABEL $mode c=$c rps=$rps p99=$p99 non2xx=${non2xx:-0}"
    kill $pid; wait $pid 2>/dev/null; rm -rf $state
  done
done
rm -f "$lua"
