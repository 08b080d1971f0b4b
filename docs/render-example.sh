#!/bin/sh
# Renders the README's two example messages (tests/golden/readme_firing.md and
# readme_resolved.md, which a test keeps equal to what the binary renders) to
# docs/wecom-example.png, laid out the way a WeCom group chat shows a robot's markdown:
# headings, bold, coloured <font>, quotes, links shown by their text only.
#
# Needs wkhtmltoimage (Debian package wkhtmltopdf) and a CJK font (fonts-wqy-zenhei); run as
# root, it installs them with apt when missing. Usage: docs/render-example.sh [OUT.png]
set -eu
cd "$(dirname "$0")/.."
out=${1:-docs/wecom-example.png}

if ! command -v wkhtmltoimage >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi 'wenquanyi'; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "render-example: needs wkhtmltoimage and fonts-wqy-zenhei (apt-get install wkhtmltopdf fonts-wqy-zenhei)" >&2
        exit 1
    fi
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends wkhtmltopdf fonts-wqy-zenhei >/dev/null
fi

# WeCom markdown → HTML, for exactly the markup the relay writes (label text is escaped to
# full-width characters, so every < and [ here is ours).
md_to_html() {
    sed -e 's/&/\&amp;/g' \
        -e 's#<font color="\(warning\|info\|comment\)">#<span class="\1">#g' \
        -e 's#</font>#</span>#g' \
        -e 's#\*\*\([^*]*\)\*\*#<b>\1</b>#g' \
        -e 's#\[\([^]]*\)\](\([^)]*\))#<a>\1</a>#g' \
        -e 's#^\#\# \(.*\)$#<div class="h">\1</div>#' \
        -e 's#^> \(.*\)$#<div class="q">\1</div>#' \
        -e 's#^$#<div class="gap"></div>#' \
        -e '/^<div/!s#^\(.*\)$#<div>\1</div>#' \
        "$1"
}

bubble() {
    printf '<div class="msg"><div class="avatar">警</div><div class="body"><div class="name">告警机器人 <span class="time">%s</span></div><div class="bubble">\n' "$2"
    md_to_html "$1"
    printf '</div></div></div>\n'
}

html=$(mktemp --suffix=.html)
trap 'rm -f "$html"' EXIT
{
    cat <<'HTML'
<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body { margin: 0; padding: 14px 12px; background: #f2f3f5; width: 600px;
       font-family: "WenQuanYi Zen Hei", sans-serif; font-size: 14px; color: #1f2329; }
.msg { display: -webkit-box; margin-bottom: 16px; }
.avatar { width: 36px; height: 36px; border-radius: 4px; background: #3370ff; color: #fff;
          text-align: center; line-height: 36px; font-size: 16px; margin-right: 10px; }
.body { -webkit-box-flex: 1; width: 520px; }
.name { color: #8f959e; font-size: 12px; margin-bottom: 4px; }
.time { margin-left: 6px; }
.bubble { background: #fff; border-radius: 6px; padding: 10px 12px; line-height: 1.6;
          word-wrap: break-word; }
.h { font-size: 16px; font-weight: bold; }
.q { color: #646a73; border-left: 3px solid #dee0e3; padding-left: 8px; }
.gap { height: 8px; }
.warning { color: #ff7d00; } .info { color: #00b42a; } .comment { color: #8f959e; }
a { color: #3370ff; margin-right: 2px; }
</style></head><body>
HTML
    bubble tests/golden/readme_firing.md "20:03"
    bubble tests/golden/readme_resolved.md "21:08"
    echo '</body></html>'
} >"$html"

# --quality 0: the strongest PNG compression (Qt maps quality to compression), 120 KB not 2 MB.
wkhtmltoimage --quiet --width 624 --quality 0 --format png "$html" "$out"
echo "wrote $out"
