# As %systemd_post: on first install, enable or not as the distribution's preset says.
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null; then
    systemctl --no-reload preset weixin-robot.service >/dev/null 2>&1 || :
fi
command -v systemctl >/dev/null && systemctl daemon-reload >/dev/null 2>&1 || :
exit 0
