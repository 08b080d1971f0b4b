#!/usr/bin/env bash
# Builds the container images without a Docker engine, with umoci and skopeo, from the static
# binaries in dist/ (packaging/build-static.sh):
#   dist/oci/                               OCI layout: tags v1-amd64, v1-arm64 and index v1
#   dist/weixin-robot-v1-<arch>.docker.tar  for `docker load` (tagged llody/weixin-robot:v1-<arch>)
#   dist/weixin-robot-v1-<arch>.oci.tar     for `podman load`, `skopeo copy oci-archive:…`
#   dist/weixin-robot-v1.oci.tar            the multi-arch index, for `skopeo copy --all`
# The image matches the Dockerfile: /weixin-robot as entrypoint, user 65532, port 6000,
# /var/lib/weixin-robot as the spool, OCI labels.
#
#   packaging/build-images.sh               # everything
#   packaging/build-images.sh --stage-only  # only dist/image/, the Dockerfile's build context
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"weixin-robot","version":"\([^"]*\)".*/\1/p')
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
repo=llody/weixin-robot
declare -A triple=([amd64]=x86_64-unknown-linux-musl [arm64]=aarch64-unknown-linux-musl)

rm -rf dist/image && mkdir -p dist/image/state
for arch in amd64 arm64; do
  bin="dist/weixin-robot-$version-${triple[$arch]}"
  [ -x "$bin" ] || { echo "build-images.sh: $bin missing: run packaging/build-static.sh" >&2; exit 1; }
  mkdir -p "dist/image/$arch" && cp "$bin" "dist/image/$arch/weixin-robot"
done
[ "${1:-}" = --stage-only ] && exit 0

missing=()
for tool in umoci skopeo; do command -v $tool >/dev/null || missing+=($tool); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "build-images.sh: install ${missing[*]}" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

layout=dist/oci
rm -rf "$layout" dist/weixin-robot-v1*.tar
umoci init --layout "$layout"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for arch in amd64 arm64; do
  tag="v1-$arch"
  umoci new --image "$layout:$tag"
  umoci config --image "$layout:$tag" --os linux --architecture "$arch" \
    --config.entrypoint /weixin-robot --config.user 65532:65532 --config.exposedports 6000/tcp \
    --config.env WEIXIN_ROBOT_STATE_DIR=/var/lib/weixin-robot --config.workingdir / \
    --config.label org.opencontainers.image.title=weixin-robot \
    --config.label "org.opencontainers.image.description=Relay Prometheus Alertmanager webhooks to WeCom group robots" \
    --config.label org.opencontainers.image.source=https://github.com/llody/weixin-robot \
    --config.label org.opencontainers.image.licenses=MIT \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.created=$created" \
    --created "$created" --author "weixin-robot developers"
  bundle=$(mktemp -d)
  umoci unpack --image "$layout:$tag" "$bundle/b" >/dev/null
  install -m 0755 -o 0 -g 0 "dist/image/$arch/weixin-robot" "$bundle/b/rootfs/weixin-robot"
  install -d -m 0700 -o 65532 -g 65532 "$bundle/b/rootfs/var/lib/weixin-robot"
  umoci repack --image "$layout:$tag" "$bundle/b"
  rm -rf "$bundle"
  skopeo --insecure-policy copy -q "oci:$layout:$tag" "docker-archive:dist/weixin-robot-$tag.docker.tar:$repo:$tag"
  skopeo --insecure-policy copy -q "oci:$layout:$tag" "oci-archive:dist/weixin-robot-$tag.oci.tar:$tag"
done
umoci gc --layout "$layout"

# The multi-arch index `v1`: an OCI image index over the two manifests, added to the layout.
python3 - "$layout" <<'PY'
import hashlib, json, sys
layout = sys.argv[1]
index_path = f"{layout}/index.json"
index = json.load(open(index_path))
ref = "org.opencontainers.image.ref.name"
by_tag = {m.get("annotations", {}).get(ref): m for m in index["manifests"]}
manifests = []
for arch in ("amd64", "arm64"):
    m = dict(by_tag[f"v1-{arch}"])
    m.pop("annotations", None)
    m["platform"] = {"architecture": arch, "os": "linux"}
    manifests.append(m)
blob = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": manifests}, separators=(",", ":")).encode()
digest = hashlib.sha256(blob).hexdigest()
open(f"{layout}/blobs/sha256/{digest}", "wb").write(blob)
index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(ref) != "v1"]
index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                           "digest": f"sha256:{digest}", "size": len(blob),
                           "annotations": {ref: "v1"}})
json.dump(index, open(index_path, "w"), separators=(",", ":"))
PY
skopeo --insecure-policy copy -q --all "oci:$layout:v1" "oci-archive:dist/weixin-robot-v1.oci.tar:v1"
ls -l dist/weixin-robot-v1*.tar
