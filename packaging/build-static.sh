#!/usr/bin/env bash
# Builds the static musl binaries for x86_64 and aarch64 without Docker and puts them in
# dist/: dist/weixin-robot-<version>-<target>. Checks each is static (no program
# interpreter, no NEEDED entries) and prints its size.
#
# Needs: rustup targets x86_64-unknown-linux-musl and aarch64-unknown-linux-musl, Debian's
# gcc-aarch64-linux-gnu (the aarch64 linker) and binutils (readelf). Installs them when
# missing and run as root. Linker and C compiler settings live in .cargo/config.toml.
#
#   packaging/build-static.sh              # both targets
#   packaging/build-static.sh aarch64-unknown-linux-musl
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

installed_targets=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v readelf >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "build-static.sh: install ${missing[*]}" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

version=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"weixin-robot","version":"\([^"]*\)".*/\1/p')
mkdir -p dist
for t in "${targets[@]}"; do
  start=$(date +%s)
  cargo build --release --locked --target "$t"
  out="dist/weixin-robot-$version-$t"
  cp "target/$t/release/weixin-robot" "$out"
  if readelf -l "$out" | grep -q "Requesting program interpreter"; then
    echo "build-static.sh: $out has a program interpreter: not static" >&2; exit 1
  fi
  if readelf -d "$out" | grep -q "(NEEDED)"; then
    echo "build-static.sh: $out needs shared libraries: not static" >&2; exit 1
  fi
  echo "$out: static, $(stat -c %s "$out") bytes, built in $(( $(date +%s) - start ))s"
done
