#!/usr/bin/env bash
# Builds the .deb (amd64, arm64) and .rpm (x86_64, aarch64) packages from the static binaries
# that packaging/build-static.sh put in dist/, into dist/. Installs cargo-deb and
# cargo-generate-rpm when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm

version=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"weixin-robot","version":"\([^"]*\)".*/\1/p')
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  bin="dist/weixin-robot-$version-$target"
  [ -x "$bin" ] || { echo "build-packages.sh: $bin missing: run packaging/build-static.sh" >&2; exit 1; }
  # cargo-deb and cargo-generate-rpm take the binary from target/<triple>/release.
  mkdir -p "target/$target/release"
  cp "$bin" "target/$target/release/weixin-robot"
  cargo deb --no-build --no-strip --target "$target" --output dist/
  cargo generate-rpm --target "$target" --output dist/
done
ls -l dist/*.deb dist/*.rpm
