#!/usr/bin/env bash
# Validates what packaging/build-images.sh built: per-arch config (architecture, entrypoint,
# user, port, labels), the index's digests against the per-arch manifests, the archives'
# tags, and runs the amd64 image for real with runc to relay one alert to a fake WeCom server
# on loopback (the integration tests' smoke test through packaging/runc-run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-images: $*" >&2; exit 1; }
command -v runc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null; }
sk() { skopeo --insecure-policy "$@"; }

for arch in amd64 arm64; do
  sk inspect --config "oci:dist/oci:v1-$arch" | python3 -c '
import json, sys
arch = sys.argv[1]
c = json.load(sys.stdin)
cfg = c["config"]
checks = {
    "architecture": (c["architecture"], arch),
    "os": (c["os"], "linux"),
    "entrypoint": (cfg.get("Entrypoint"), ["/weixin-robot"]),
    "user": (cfg.get("User"), "65532:65532"),
    "port": (sorted(cfg.get("ExposedPorts", {})), ["6000/tcp"]),
    "source label": (cfg.get("Labels", {}).get("org.opencontainers.image.source"), "https://github.com/llody/weixin-robot"),
}
bad = [f"{k}: {got!r} != {want!r}" for k, (got, want) in checks.items() if got != want]
if bad:
    sys.exit("check-images: v1-" + arch + ": " + "; ".join(bad))
print("v1-%s: %s/%s, entrypoint %s, user %s, ports %s" % (arch, c["architecture"], c["os"], cfg["Entrypoint"], cfg["User"], list(cfg["ExposedPorts"])))
' "$arch"
  digest=$(sk inspect --format '{{.Digest}}' "oci:dist/oci:v1-$arch")
  sk inspect --raw "oci:dist/oci:v1" | python3 -c '
import json, sys
arch, digest = sys.argv[1], sys.argv[2]
idx = json.load(sys.stdin)
found = [m for m in idx["manifests"] if m["platform"]["architecture"] == arch]
if len(found) != 1 or found[0]["digest"] != digest:
    sys.exit(f"check-images: index v1 does not point at v1-{arch} ({digest})")
print(f"index v1 → {arch} {digest}")
' "$arch" "$digest"
  tar -xOf "dist/weixin-robot-v1-$arch.docker.tar" manifest.json | grep -q "\"docker.io/llody/weixin-robot:v1-$arch\"" \
    || fail "dist/weixin-robot-v1-$arch.docker.tar is not tagged llody/weixin-robot:v1-$arch"
  [ "$(sk inspect --format '{{.Digest}}' "oci-archive:dist/weixin-robot-v1-$arch.oci.tar")" = "$digest" ] \
    || fail "oci archive digest differs for $arch"
done
[ "$(sk inspect --raw oci-archive:dist/weixin-robot-v1.oci.tar | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["manifests"]))')" = 2 ] \
  || fail "multi-arch archive does not hold two manifests"

echo "-- running the amd64 image with runc"
trap 'runc list -q 2>/dev/null | grep "^wxr-" | xargs -r -n1 runc delete --force' EXIT
WEIXIN_ROBOT_BIN=/weixin-robot WEIXIN_ROBOT_RUNNER="$PWD/packaging/runc-run.sh" \
WEIXIN_ROBOT_EXPECT_TARGET=x86_64-unknown-linux-musl \
  cargo test --locked --test it smoke -- --nocapture
