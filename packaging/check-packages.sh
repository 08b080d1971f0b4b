#!/usr/bin/env bash
# Checks what packaging/build-packages.sh built: lintian, rpm metadata and scripts, the unit's
# hardening score, and a real dpkg install → upgrade (an edited config survives) → purge on
# this machine. Run as root; installs lintian, rpm and dpkg-dev tools when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-packages: $*" >&2; exit 1; }
version=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"weixin-robot","version":"\([^"]*\)".*/\1/p')

echo "-- lintian"
for deb in dist/weixin-robot_"$version"-1_{amd64,arm64}.deb; do
  out=$(lintian --fail-on error,warning "$deb" 2>&1 | grep -v "running with root privileges" || true)
  [ -z "$out" ] || fail "lintian on $deb: $out"
  echo "$deb: lintian clean (overrides: $(grep -c '^weixin-robot:' packaging/debian/lintian-overrides), each with its reason)"
done

echo "-- rpm"
for arch in x86_64 aarch64; do
  rpmfile="dist/weixin-robot-$version-1.$arch.rpm"
  [ "$(rpm -qp --qf '%{ARCH}' "$rpmfile")" = "$arch" ] || fail "$rpmfile: wrong arch"
  rpm -qpi "$rpmfile" | grep -q "^License *: MIT" || fail "$rpmfile: license"
  configs=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpmfile" | grep ' cn$' | cut -d' ' -f1 | sort | tr '\n' ' ')
  [ "$configs" = "/etc/sysconfig/weixin-robot /etc/weixin-robot/key " ] || fail "$rpmfile: %config(noreplace) files are: $configs"
  rpm -qplc "$rpmfile" | grep -q /etc/weixin-robot/key || fail "$rpmfile: -qplc"
  rpm -qpl "$rpmfile" | grep -q /usr/lib/systemd/system/weixin-robot.service || fail "$rpmfile: no unit"
  scripts=$(rpm -qp --scripts "$rpmfile")
  grep -q "useradd --system" <<<"$scripts" || fail "$rpmfile: no user creation"
  grep -q "systemctl --no-reload preset" <<<"$scripts" || fail "$rpmfile: no preset"
  grep -q "userdel weixin-robot" <<<"$scripts" || fail "$rpmfile: no user removal"
  [ "$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$rpmfile" | grep /etc/weixin-robot/key | cut -d' ' -f1-2)" = "-rw-r----- root:weixin-robot" ] \
    || fail "$rpmfile: key file mode"
  echo "$rpmfile: ok ($(stat -c %s "$rpmfile") bytes)"
done

echo "-- systemd unit"
score=$(systemd-analyze security --offline=yes systemd/weixin-robot.service 2>/tmp/sa.err | sed -n 's/.*Overall exposure level for weixin-robot.service: \([0-9.]*\).*/\1/p')
[ ! -s /tmp/sa.err ] || fail "systemd-analyze security complained: $(cat /tmp/sa.err)"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || fail "exposure $score > 1.5"
echo "exposure level $score"

echo "-- dpkg install, upgrade, purge"
deb1="dist/weixin-robot_${version}-1_amd64.deb"
deb2="dist/weixin-robot_${version}-2_amd64.deb"
cargo deb --no-build --no-strip --target x86_64-unknown-linux-musl --deb-revision 2 --output "$deb2" >/dev/null
trap 'dpkg -P weixin-robot >/dev/null 2>&1 || true' EXIT
dpkg -P weixin-robot >/dev/null 2>&1 || true
dpkg -i "$deb1" >/dev/null
getent passwd weixin-robot >/dev/null || fail "user not created"
/usr/bin/weixin-robot --version | grep -q "x86_64-unknown-linux-musl" || fail "installed binary"
[ "$(stat -c '%U:%G %a' /etc/weixin-robot/key)" = "root:weixin-robot 640" ] || fail "key file mode"
[ "$(stat -c '%U:%G %a' /etc/weixin-robot)" = "root:weixin-robot 2750" ] || fail "key directory mode"
dpkg-query -W -f='${Conffiles}\n' weixin-robot | grep -q /etc/default/weixin-robot || fail "not a conffile"
verify=$(systemd-analyze verify --man=no /usr/lib/systemd/system/weixin-robot.service 2>&1 || true)
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
echo "PORT=6123 # edited by check-packages" >> /etc/default/weixin-robot
dpkg -i --force-confold "$deb2" >/dev/null
grep -q "edited by check-packages" /etc/default/weixin-robot || fail "upgrade lost the edited config"
[ "$(dpkg-query -W -f='${Version}' weixin-robot)" = "${version}-2" ] || fail "upgrade"
dpkg -P weixin-robot >/dev/null
trap - EXIT
getent passwd weixin-robot >/dev/null && fail "user left after purge"
[ ! -e /etc/default/weixin-robot ] || fail "config left after purge"
[ ! -e /etc/weixin-robot ] || fail "keys left after purge"
[ ! -e /usr/bin/weixin-robot ] || fail "binary left after purge"
rm -f "$deb2"
echo "install → upgrade (edited config kept) → purge (user and config gone): ok"
