# As %systemd_postun_with_restart on upgrade; on erase, remove the user and the spool.
command -v systemctl >/dev/null && systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
    command -v systemctl >/dev/null && systemctl try-restart weixin-robot.service >/dev/null 2>&1 || :
else
    rm -rf /var/lib/weixin-robot
    getent passwd weixin-robot >/dev/null && userdel weixin-robot >/dev/null 2>&1 || :
    getent group weixin-robot >/dev/null && groupdel weixin-robot >/dev/null 2>&1 || :
fi
exit 0
