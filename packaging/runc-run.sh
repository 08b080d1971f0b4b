#!/usr/bin/env bash
# Runs the amd64 image (dist/oci:v1-amd64) for real with runc, as a drop-in command for the
# integration tests' WEIXIN_ROBOT_RUNNER: `runc-run.sh /weixin-robot ARGS…`. The container
# shares the host's network namespace so it can listen on, and reach, 127.0.0.1; everything
# else (mount, pid, ipc, uts namespaces, user 65532, the image's env) is as the image says.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
image=${WEIXIN_ROBOT_IMAGE:-$here/dist/oci:v1-amd64}
work=$(mktemp -d /tmp/wxr-runc.XXXXXX)
id=wxr-$(basename "$work")
cleanup() { runc delete --force "$id" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
umoci unpack --image "$image" "$work/bundle" >/dev/null
python3 - "$work/bundle/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
c = json.load(open(path))
c["process"]["args"] = args
c["process"]["terminal"] = False
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
json.dump(c, open(path, "w"))
PY
cd "$work/bundle"
# Forward TERM/INT to the container so drain-on-signal behaves as under docker stop.
runc run "$id" &
child=$!
trap 'runc kill "$id" TERM 2>/dev/null || true' TERM INT
wait "$child"; status=$?
# wait returns early when a trapped signal arrives; wait again for the real exit.
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
exit $status
