# As %systemd_preun: on erase (not upgrade), stop and disable.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null; then
    systemctl --no-reload disable --now weixin-robot.service >/dev/null 2>&1 || :
fi
exit 0
