# The service user; the unit runs as it and owns /var/lib/weixin-robot.
getent group weixin-robot >/dev/null || groupadd --system weixin-robot
getent passwd weixin-robot >/dev/null || useradd --system --gid weixin-robot --no-create-home \
    --home-dir /var/lib/weixin-robot --shell /sbin/nologin --comment "weixin-robot relay" weixin-robot
exit 0
