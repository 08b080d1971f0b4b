#!/usr/bin/env bash
# The whole test suite, as the README documents it and as CI runs it (.ci/run calls this).
# Installs what the tests need when it is missing (Alertmanager, openssl), then:
# formatting, clippy, unit tests, integration tests including the real-Alertmanager ones.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
need_apt() { # need_apt COMMAND PACKAGE...
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "ci/test.sh: $cmd is missing; install: sudo apt-get install $*" >&2
    exit 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need_apt prometheus-alertmanager prometheus-alertmanager
need_apt openssl openssl
need_apt promtool prometheus
need_apt aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
need_apt qemu-aarch64-static qemu-user-static
need_apt readelf binutils
need_apt lintian lintian
need_apt rpm rpm
need_apt systemd-analyze systemd
need_apt debootstrap debootstrap
need_apt systemd-nspawn systemd-container
need_apt umoci umoci
need_apt skopeo skopeo
need_apt runc runc
need_apt docker-compose docker-compose
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt no-such-command python3-venv

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test (unit, integration, real Alertmanager; fuzzing for a bounded time)"
WEIXIN_ROBOT_FUZZ_SECONDS=${WEIXIN_ROBOT_FUZZ_SECONDS:-20} \
WEIXIN_ROBOT_FUZZ_REQUESTS=${WEIXIN_ROBOT_FUZZ_REQUESTS:-2000} \
  cargo test --locked -- --include-ignored

echo "== static musl binaries for x86_64 and aarch64, each smoke-tested (aarch64 under qemu)"
packaging/build-static.sh
version=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"weixin-robot","version":"\([^"]*\)".*/\1/p')
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  runner=""
  [ "$target" = aarch64-unknown-linux-musl ] && runner=qemu-aarch64-static
  WEIXIN_ROBOT_BIN="$PWD/dist/weixin-robot-$version-$target" WEIXIN_ROBOT_RUNNER="$runner" \
  WEIXIN_ROBOT_EXPECT_TARGET="$target" \
    cargo test --locked --test it smoke -- --nocapture
done
echo "== every integration test against the shipped static x86_64 binary (its own memcpy, LTO)"
WEIXIN_ROBOT_BIN="$PWD/dist/weixin-robot-$version-x86_64-unknown-linux-musl" \
  cargo test --locked --test it -- --include-ignored

echo "== .deb and .rpm packages: lintian, rpm metadata, unit hardening, dpkg round trip"
packaging/build-packages.sh
packaging/check-packages.sh
echo "== both packages under a real systemd (systemd-nspawn, Debian bookworm tree cached)"
packaging/check-systemd.sh

echo "== container images (umoci/skopeo, amd64 run with runc), compose and Kubernetes files"
packaging/build-images.sh
packaging/check-images.sh
packaging/check-deploy.sh
