# Keys are read by the service user on every start and reload (so a reload rotates them): the
# key is root:weixin-robot 0640 in the package; the directory is made setgid weixin-robot so
# key files an operator adds there get the group too (only while it is still root's group).
if [ "$(stat -c %G /etc/weixin-robot 2>/dev/null)" = root ]; then
    chgrp weixin-robot /etc/weixin-robot && chmod 2750 /etc/weixin-robot
fi
# As %systemd_post: on first install, enable or not as the distribution's preset says.
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null; then
    systemctl --no-reload preset weixin-robot.service >/dev/null 2>&1 || :
fi
command -v systemctl >/dev/null && systemctl daemon-reload >/dev/null 2>&1 || :
exit 0
