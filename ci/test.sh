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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test (unit, integration, real Alertmanager; fuzzing for a bounded time)"
WEIXIN_ROBOT_FUZZ_SECONDS=${WEIXIN_ROBOT_FUZZ_SECONDS:-20} \
WEIXIN_ROBOT_FUZZ_REQUESTS=${WEIXIN_ROBOT_FUZZ_REQUESTS:-2000} \
  cargo test --locked -- --include-ignored
