#!/usr/bin/env python3
"""Storm mode (#15): what a WeCom group can read, and when, during an alert storm.

Figures only; nothing here asserts a speed. Runs the relay binary (WEIXIN_ROBOT_BIN, default
target/release/weixin-robot) against a fake WeCom on 127.0.0.1 that enforces WeCom's rules:
markdown <= 4,096 bytes and text <= 2,048 (else 40058), a budget of N sends per window counted
at arrival whatever the answer (past it 45009), `upload_media?key=…&type=file` with a multipart
part `media` carrying a filename (5 B to 20 MB) answered with a media_id, and
`{"msgtype":"file"}` messages (40007 for an unknown media_id). It records every message with its
arrival time and reads what the group can read: every alert carries `instance=host-NNNNN`, and
its state is taken from
  - a markdown/text message: the section it sits in (告警通知 = firing, 恢复通知 = resolved), in
    the full layout (`故障实例: host-…`) or the compact one (`instance=host-…`), or a digest's
    "newest changes" line (its 告警中/已恢复 word);
  - a file: its table rows (`| 告警中 | …` / `| 已恢复 | …`), counted when the file message
    naming its media_id is accepted (an upload alone shows nothing).
Before the runs, the same reading is checked against the binary's own `render` and
`render --digest` output for three alerts, so a changed layout stops the bench with a clear
message instead of showing up as lost alerts.

Scenario A (#15's storm, the budget sped up 10x): 10,000 alerts in 200 groups of 50 (8
alertnames, 3 severities, grouped by alertname and cluster) are posted, then 3,000 of them are
resolved (15 per group, each group posted again whole, as Alertmanager does); relay at
`--rate 20/6s --max-delay 12s`, fake budget 20 per 6 s. Reported: messages and files used, the
delay from acceptance (the 200 answer) to the group first seeing each alert's latest state
(worst and median), alerts whose latest state never arrived (given up after A_TIMEOUT
seconds), the most messages in any 6 s window, then one new alert posted once the storm has
settled (outbox empty, one quiet window): time until it is shown in the full layout.

Scenario B (#15's "real budget, not sped up"): 1,000 one-alert notifications posted within a
second (4 connections), relay at `--rate 20/60s` (default `--max-delay 2m`), fake budget 20 per
60 s. Reported: time from the first post to the first message, the share of alerts readable
(messages + attached file) 60 s and 120 s after the first post, and the messages used by then.
Each run takes about 2 minutes.

Modes: `storm` runs the relay as shipped. `today` is the behaviour before storm mode, with
compact and digest off: `--max-delay 1h`. The sender (src/outbox/sender.rs, `storm()`) leaves
the full layout whenever the outbox's estimate of full-layout messages fits
`digest::capacity(rate, recent sends, max_delay - oldest pending age)`; with 1 h that capacity
is ~11,600 messages at 20/6s and ~1,160 at 20/60s, above the ~1,200 and ~200 the scenarios need
and still so at the runs' caps (A_TODAY_CAP, default 600 s; B stops at 121 s), so the full
layout is always chosen. A `today` run of A that has not drained by its cap reports the share
delivered at the cap and an extrapolated drain time, labelled as such.

Usage (one command, prints markdown tables):
  cargo build --release && benches/storm.py [a|b|all] [storm|today|both]
Defaults: all both (~14 minutes). Env: WEIXIN_ROBOT_BIN, A_TIMEOUT (180), A_TODAY_CAP (600),
STORM_KEEP=1 keeps the relay logs, every message and every file (their directory is printed),
STORM_MSGTYPE=text|markdown_v2 gives the robot that message type (through --config),
STORM_RELAY_ARGS adds relay flags (e.g. "--state-dir /tmp/x"), STORM_UPLOAD_ERRCODE=N[:K]
makes the fake refuse every upload (or the first K) with errcode N (the compact fallback).
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "stormbench-0123456789"
MARKDOWN_LIMIT = 4096  # WeCom: https://developer.work.weixin.qq.com/document/path/91770
TEXT_LIMIT = 2048
HOST = re.compile(r"host-(\d{5})")
NAMES = [  # 8 alertnames, 3 severities
    ("NodeDown", "critical"),
    ("BlackboxProbeFailed", "critical"),
    ("TargetDown", "critical"),
    ("HighDiskUsage", "warning"),
    ("HighMemoryUsage", "warning"),
    ("KubePodCrashLooping", "warning"),
    ("NTPClockSkew", "info"),
    ("SystemdUnitFailed", "info"),
]
NEW_ALERT = 99999


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# What the group can read


def shown_in_message(text):
    """{id: (state, layout)} for every alert a markdown/text message shows."""
    out = {}
    section = None
    for line in text.splitlines():
        heading = line.startswith("#") or " 共 " in line
        if heading and "告警通知" in line:
            section = "firing"
            continue
        if heading and "恢复通知" in line:
            section = "resolved"
            continue
        if heading and "告警汇总" in line:
            section = "digest"
            continue
        ids = HOST.findall(line)
        if not ids:
            continue
        if section == "digest":
            state = "firing" if "告警中" in line else "resolved" if "已恢复" in line else None
            layout = "digest"
        else:
            state = section
            layout = "full" if "故障实例" in line else "compact"
        for i in ids:
            i = int(i)
            # The full layout also names the host in its summary line: 故障实例 decides.
            if i not in out or layout == "full":
                out[i] = (state, layout)
    return out


def shown_in_file(data):
    """{id: (state, "file")} for the table rows of an attached file."""
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("| 告警中 |"):
            state = "firing"
        elif line.startswith("| 已恢复 |"):
            state = "resolved"
        else:
            continue
        for i in HOST.findall(line):
            out[int(i)] = (state, "file")
    return out


def check_parser(binary, logdir):
    """Reads the relay's own layouts for three alerts (`render`, `render --digest`: the full
    layout, the digest, its file and the compact layout) and checks that every layout shows
    host-00001 and -00003 firing and -00002 resolved, so a changed format fails loudly here
    instead of counting alerts as lost. No network."""
    now = datetime.now(timezone.utc)
    path = os.path.join(logdir, "check.json")
    with open(path, "wb") as f:
        f.write(notification("NodeDown", "c1", [
            alert(1, "NodeDown", "critical", "c1", "firing", now),
            alert(2, "NodeDown", "critical", "c1", "resolved", now, now),
            alert(3, "NodeDown", "critical", "c1", "firing", now)]))
    want = {1: "firing", 2: "resolved", 3: "firing"}
    found = {}
    for args in (["render"], ["render", "--digest"]):
        out = subprocess.run([binary] + args + [path], capture_output=True, text=True).stdout
        parts = re.split(r"^----- (.*) -----$", out, flags=re.M)
        for title, body in zip(parts[1::2], parts[2::2]):
            kind = title.split()[0]  # message, digest, file, compact
            seen = shown_in_file(body.encode()) if kind == "file" else shown_in_message(body)
            for i, (state, layout) in seen.items():
                found.setdefault(kind, {})[i] = state
    expected_kinds = {"message", "digest", "file", "compact"}
    bad = [k for k in expected_kinds if found.get(k) != want]
    if bad:
        sys.exit(f"the bench cannot read the relay's layouts {bad}: found {found}")


# ---------------------------------------------------------------------------------------------
# Fake WeCom


class Fake:
    """WeCom's robot API on 127.0.0.1 with its limits; records every call with its time."""

    def __init__(self, budget, window_s):
        self.budget, self.window_s = budget, window_s
        self.lock = threading.Lock()
        self.sends = []  # {at, msgtype, errcode, content | media_id}
        self.uploads = {}  # media_id -> bytes
        self.upload_answers = []  # (at, errcode, bytes)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                path, _, query = self.path.partition("?")
                params = dict(p.partition("=")[::2] for p in query.split("&") if p)
                if params.get("key") != KEY:
                    answer = {"errcode": 93000, "errmsg": "invalid webhook url"}
                elif path == "/cgi-bin/webhook/send":
                    answer = fake.send(body)
                elif path == "/cgi-bin/webhook/upload_media":
                    answer = fake.upload(params, self.headers.get("Content-Type", ""), body)
                else:
                    answer = {"errcode": 404, "errmsg": "no such api"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cgi-bin/webhook/send?key={KEY}"

    def send(self, body):
        now = time.monotonic()
        try:
            msg = json.loads(body)
        except ValueError:
            msg = {}
        msgtype = msg.get("msgtype", "") if isinstance(msg, dict) else ""
        rec = {"at": now, "msgtype": msgtype}
        with self.lock:
            recent = sum(1 for s in self.sends if now - s["at"] < self.window_s)
            if msgtype in ("markdown", "markdown_v2", "text"):
                content = str(msg.get(msgtype, {}).get("content", ""))
                rec["content"] = content
                limit = TEXT_LIMIT if msgtype == "text" else MARKDOWN_LIMIT
                code = 40058 if len(content.encode()) > limit else 0
            elif msgtype == "file":
                rec["media_id"] = str(msg.get("file", {}).get("media_id", ""))
                code = 0 if rec["media_id"] in self.uploads else 40007
            else:
                code = 40008
            if recent >= self.budget:  # WeCom counts every call, refused or not
                code = 45009
            rec["errcode"] = code
            self.sends.append(rec)
        return {"errcode": code, "errmsg": "ok" if code == 0 else "fake wecom"}

    def upload(self, params, content_type, body):
        now = time.monotonic()
        code, media_id = 0, None
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        part = None
        if params.get("type") != "file":
            code = 40004
        elif not content_type.startswith("multipart/form-data") or not boundary:
            code = 40005
        else:
            for p in body.split(b"--" + boundary.group(1).encode()):
                head, sep, data = p.partition(b"\r\n\r\n")
                if sep and b'name="media"' in head and b"filename=" in head:
                    part = data[:-2] if data.endswith(b"\r\n") else data
            if part is None:
                code = 41005
            elif not 5 <= len(part) <= 20_000_000:
                code = 40006
        refuse, _, times = os.environ.get("STORM_UPLOAD_ERRCODE", "").partition(":")
        with self.lock:
            # A robot whose uploads fail (the first `times` ones, or all): storm mode falls back.
            refused_so_far = sum(1 for a in self.upload_answers if a[1] == int(refuse or 0))
            if code == 0 and refuse and (not times or refused_so_far < int(times)):
                code = int(refuse)
            if code == 0:
                media_id = f"media-{len(self.uploads) + 1}"
                self.uploads[media_id] = part
            self.upload_answers.append((now, code, len(part or b"")))
        if code:
            return {"errcode": code, "errmsg": "fake upload"}
        return {"errcode": 0, "errmsg": "ok", "type": "file", "media_id": media_id,
                "created_at": str(int(time.time()))}

    def snapshot(self):
        with self.lock:
            return list(self.sends), dict(self.uploads), list(self.upload_answers)


class Reader:
    """What the group has read so far: the first time each (alert, state) was shown, and how."""

    def __init__(self, fake):
        self.fake, self.done = fake, 0
        self.first = {}  # (id, state) -> (t, layout)
        self.last = {}  # id -> state last shown
        self.unreadable = 0  # delivered messages showing a host without a readable state

    def update(self):
        sends, uploads, _ = self.fake.snapshot()
        for s in sends[self.done:]:
            if s["errcode"] != 0:
                continue
            if s["msgtype"] == "file":
                seen = shown_in_file(uploads.get(s["media_id"], b""))
            else:
                seen = shown_in_message(s.get("content", ""))
            for i, (state, layout) in seen.items():
                if state is None:
                    self.unreadable += 1
                    continue
                self.first.setdefault((i, state), (s["at"], layout))
                self.last[i] = state
        self.done = len(sends)

    def seen(self, i, state):
        return self.first.get((i, state))


# ---------------------------------------------------------------------------------------------
# The relay and Alertmanager's side


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


RELAYS = []  # every relay started, stopped on the way out whatever happens


class Relay:
    def __init__(self, binary, fake, args, logdir, name):
        self.log_path = os.path.join(logdir, f"{name}.log")
        env = dict(os.environ, RUST_LOG="info")
        env.pop("KEY", None)
        env.pop("PORT", None)
        robot = ["--key", fake.url]
        msgtype = os.environ.get("STORM_MSGTYPE")
        if msgtype:  # a robot of another message type needs --config
            config = os.path.join(logdir, f"{name}.toml")
            with open(config, "w") as f:
                f.write(f'[robots.default]\nkey = "{fake.url}"\nmsgtype = "{msgtype}"\n')
            robot = ["--config", config]
        args = args + os.environ.get("STORM_RELAY_ARGS", "").split()
        for _ in range(5):
            self.port = free_port()
            with open(self.log_path, "wb") as logf:
                self.proc = subprocess.Popen(
                    [binary, "--listen", "127.0.0.1", "--port", str(self.port)] + robot + args,
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env)
            RELAYS.append(self)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.get("/healthz")[0] == 200:
                        return
                except (OSError, http.client.HTTPException):
                    pass
                time.sleep(0.05)
            self.stop()
            if "Address already in use" not in self.logs():
                sys.exit(f"relay did not start:\n{self.logs()}")
        sys.exit("no free port for the relay")

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def outbox_messages(self):
        _, text = self.get("/metrics")
        m = re.search(r"^weixin_robot_outbox_messages\{[^}]*\} (\S+)", text, re.M)
        return float(m.group(1)) if m else -1

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Poster:
    """One keep-alive connection posting notifications as Alertmanager does: a 5xx or a network
    error is retried (bounded); returns the status and when the answer arrived."""

    def __init__(self, port):
        self.port, self.conn = port, None

    def post(self, body):
        for attempt in range(60):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("POST", "/alertinfo", body, {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                r.read()
                if r.status < 500:
                    return r.status, time.monotonic()
            except (OSError, http.client.HTTPException):
                if self.conn:
                    self.conn.close()
                self.conn = None
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
        return 0, time.monotonic()


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def alert(n, name, severity, cluster, status, starts, ends=None):
    return {
        "status": status,
        "labels": {"alertname": name, "severity": severity, "instance": f"host-{n:05d}:9100",
                   "job": "node", "cluster": cluster},
        "annotations": {"summary": f"{name} on host-{n:05d}",
                        "description": f"{name}: the node exporter reports a problem for 5 minutes"},
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends) if ends else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up+%3D%3D+0",
        "fingerprint": f"{n:016x}",
    }


def notification(name, cluster, alerts):
    firing = any(a["status"] == "firing" for a in alerts)
    return json.dumps({
        "version": "4", "receiver": "wecom", "status": "firing" if firing else "resolved",
        "groupKey": f'{{}}:{{alertname="{name}",cluster="{cluster}"}}', "truncatedAlerts": 0,
        "groupLabels": {"alertname": name, "cluster": cluster},
        "commonLabels": {"alertname": name, "job": "node", "cluster": cluster},
        "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    }).encode()


def max_in_window(times, window_s):
    times, best, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


def dump(fake, logdir, name):
    """With STORM_KEEP=1: every call the fake answered, and the files, for reading by eye."""
    if os.environ.get("STORM_KEEP") != "1":
        return
    sends, uploads, _ = fake.snapshot()
    with open(os.path.join(logdir, f"{name}.messages.jsonl"), "w", encoding="utf-8") as f:
        for s in sends:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    for media_id, data in uploads.items():
        with open(os.path.join(logdir, f"{name}.{media_id}.md"), "wb") as f:
            f.write(data)


def warnings(logs):
    """Warnings and errors the relay logged, but the expected one about plain http."""
    return sum(1 for l in logs.splitlines()
               if re.search(r"Z (WARN|ERROR) ?\]", l) and "plain http" not in l)


def sends_summary(fake, until=None):
    sends, _, uploads = fake.snapshot()
    sends = [s for s in sends if until is None or s["at"] < until]
    ok = [s for s in sends if s["errcode"] == 0]
    refused = {}
    for s in sends:
        if s["errcode"]:
            refused[s["errcode"]] = refused.get(s["errcode"], 0) + 1
    return {
        "messages": len([s for s in ok if s["msgtype"] != "file"]),
        "files": len([s for s in ok if s["msgtype"] == "file"]),
        "uploads": len([u for u in uploads if u[1] == 0 and (until is None or u[0] < until)]),
        "uploads_refused": len([u for u in uploads if u[1] and (until is None or u[0] < until)]),
        "refused": refused,
        "ok_times": [s["at"] for s in ok],
        "all_times": [s["at"] for s in sends],
    }


def fmt_refused(refused):
    return ", ".join(f"{n}× {code}" for code, n in sorted(refused.items())) or "none"


def settle_and_post_one(relay, fake, reader, window_s, quiet_s):
    """Waits until the outbox is empty and nothing was sent for a window (at most 120 s), then
    posts one new alert; returns (seconds until it is shown in the full layout, how it showed)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sends, _, _ = fake.snapshot()
        last = sends[-1]["at"] if sends else 0
        if relay.outbox_messages() == 0 and time.monotonic() - last > quiet_s:
            break
        time.sleep(0.2)
    else:
        return None, "storm never settled (120 s)"
    now = datetime.now(timezone.utc)
    body = notification("NodeDown", "late", [alert(NEW_ALERT, "NodeDown", "critical", "late",
                                                   "firing", now)])
    start = time.monotonic()
    status, _ = Poster(relay.port).post(body)
    if status != 200:
        return None, f"answered {status}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reader.update()
        got = reader.seen(NEW_ALERT, "firing")
        if got:
            return got[0] - start, got[1]
        time.sleep(0.01)
    return None, "not shown within 60 s"


# ---------------------------------------------------------------------------------------------
# Scenario A: 10,000 alerts in 200 groups, 3,000 resolved, budget 20/6s


def scenario_a(binary, mode, logdir):
    window_s, groups, per_group, resolved_per_group = 6.0, 200, 50, 15
    give_up = float(os.environ.get("A_TIMEOUT", "180"))
    today_cap = float(os.environ.get("A_TODAY_CAP", "600"))
    max_delay = "12s" if mode == "storm" else "1h"
    fake = Fake(20, window_s)
    relay = Relay(binary, fake, ["--rate", "20/6s", "--max-delay", max_delay], logdir, f"a-{mode}")
    reader = Reader(fake)
    base = datetime.now(timezone.utc) - timedelta(minutes=10)
    accepted = {}  # id -> (latest state, acceptance time)
    poster = Poster(relay.port)
    t0 = time.monotonic()
    rejected = 0
    for g in range(groups):
        name, severity = NAMES[g % 8]
        cluster = f"c{g // 8:02d}"
        ids = range(g * per_group, (g + 1) * per_group)
        body = notification(name, cluster, [
            alert(n, name, severity, cluster, "firing", base + timedelta(seconds=n % 600))
            for n in ids])
        status, at = poster.post(body)
        rejected += status != 200
        for n in ids:
            accepted[n] = ("firing", at)
    t_fired = time.monotonic()
    ends = datetime.now(timezone.utc)
    for g in range(groups):
        name, severity = NAMES[g % 8]
        cluster = f"c{g // 8:02d}"
        ids = range(g * per_group, (g + 1) * per_group)
        alerts = [
            alert(n, name, severity, cluster,
                  "resolved" if n % per_group < resolved_per_group else "firing",
                  base + timedelta(seconds=n % 600),
                  ends if n % per_group < resolved_per_group else None)
            for n in ids]
        status, at = poster.post(notification(name, cluster, alerts))
        rejected += status != 200
        for n in ids:
            if n % per_group < resolved_per_group:
                accepted[n] = ("resolved", at)
    t_posted = time.monotonic()
    estimate = relay.outbox_messages()
    log(f"A {mode}: posted 200 + 200 notifications in {t_posted - t0:.2f} s; outbox: "
        f"{estimate:.0f} messages (its full-layout estimate)")

    cap = t0 + (give_up if mode == "storm" else today_cap)
    last_log = 0
    while True:
        reader.update()
        missing = [n for n, (st, _) in accepted.items() if not reader.seen(n, st)]
        now = time.monotonic()
        if not missing or now > cap:
            break
        if now - last_log > 30:
            log(f"A {mode}: {len(accepted) - len(missing)} of {len(accepted)} latest states "
                f"shown after {now - t0:.0f} s")
            last_log = now
        time.sleep(0.2)
    t_done = time.monotonic()
    delays, layouts = [], {}
    for n, (st, at) in accepted.items():
        got = reader.seen(n, st)
        if got:
            delays.append(got[0] - at)
            layouts[got[1]] = layouts.get(got[1], 0) + 1
    delays.sort()
    stale = sum(1 for n, (st, _) in accepted.items() if reader.last.get(n) not in (None, st))
    storm_summary = sends_summary(fake)
    r = {
        "posted": f"{t_posted - t0:.1f} s ({rejected} notifications not accepted)",
        "estimate": estimate,
        "messages": storm_summary["messages"], "files": storm_summary["files"],
        "uploads": storm_summary["uploads"],
        "uploads_refused": storm_summary["uploads_refused"], "refused": fmt_refused(storm_summary["refused"]),
        "max_window": max_in_window(storm_summary["ok_times"], window_s),
        "max_window_all": max_in_window(storm_summary["all_times"], window_s),
        "lost": len(missing), "stale": stale, "unreadable": reader.unreadable,
        "worst": delays[-1] if delays else None,
        "median": delays[len(delays) // 2] if delays else None,
        "layouts": ", ".join(f"{k} {v}" for k, v in sorted(layouts.items())),
        "last_message": (max(storm_summary["ok_times"]) - t0) if storm_summary["ok_times"] else None,
        "capped": bool(missing) and mode != "storm",
        "shown": len(accepted) - len(missing), "total": len(accepted),
        "elapsed": t_done - t0,
    }
    if r["capped"]:
        # Extrapolation: the drain rate so far, applied to what is left.
        rate = r["shown"] / max(t_done - t_fired, 1e-9)
        r["extrapolated"] = t_done - t0 + len(missing) / rate if rate else None
        r["new_alert"], r["new_layout"] = None, "not measured (backlog left at the cap)"
    else:
        r["new_alert"], r["new_layout"] = settle_and_post_one(relay, fake, reader, window_s,
                                                              window_s + 1)
    logs = relay.logs()
    r["digest_lines"] = logs.count("digest sent")
    r["warnings"] = warnings(logs)
    relay.stop()
    fake.server.shutdown()
    dump(fake, logdir, f"a-{mode}")
    return r


# ---------------------------------------------------------------------------------------------
# Scenario B: 1,000 one-alert notifications within a second, budget 20/60s


def scenario_b(binary, mode, logdir):
    window_s, count, connections = 60.0, 1000, 4
    fake = Fake(20, window_s)
    args = ["--rate", "20/60s"] + (["--max-delay", "1h"] if mode == "today" else [])
    relay = Relay(binary, fake, args, logdir, f"b-{mode}")
    reader = Reader(fake)
    now = datetime.now(timezone.utc)
    bodies = []
    for n in range(count):
        name, severity = NAMES[n % 8]
        bodies.append(notification(name, f"h{n:05d}", [
            alert(n, name, severity, f"h{n:05d}", "firing", now - timedelta(seconds=n % 60))]))
    accepted, failed = {}, [0]

    def worker(k):
        p = Poster(relay.port)
        for n in range(k, count, connections):
            status, at = p.post(bodies[n])
            if status == 200:
                accepted[n] = at
            else:
                failed[0] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_posted = time.monotonic()
    log(f"B {mode}: posted {count} notifications in {t_posted - t0:.2f} s")
    while time.monotonic() < t0 + 121:
        reader.update()
        if all(reader.seen(n, "firing") for n in range(count)) and relay.outbox_messages() == 0:
            break
        time.sleep(0.2)
    reader.update()

    def readable_by(t):
        return sum(1 for n in range(count) if (reader.seen(n, "firing") or (1e18,))[0] < t0 + t)

    s60, s120 = sends_summary(fake, t0 + 60), sends_summary(fake, t0 + 120)
    everything = sends_summary(fake)
    all_seen = [reader.seen(n, "firing") for n in range(count)]
    r = {
        "posted": f"{t_posted - t0:.2f} s ({failed[0]} not accepted)",
        "first": (min(everything["ok_times"]) - t0) if everything["ok_times"] else None,
        "r60": readable_by(60), "r120": readable_by(120), "total": count,
        "m60": s60["messages"], "f60": s60["files"], "m120": s120["messages"],
        "f120": s120["files"], "refused": fmt_refused(everything["refused"]),
        "max_window": max_in_window(everything["ok_times"], window_s),
        "all_at": (max(s[0] for s in all_seen) - t0) if all(all_seen) else None,
        "stale": 0, "unreadable": reader.unreadable,
    }
    logs = relay.logs()
    r["digest_lines"] = logs.count("digest sent")
    r["warnings"] = warnings(logs)
    relay.stop()
    fake.server.shutdown()
    dump(fake, logdir, f"b-{mode}")
    return r


# ---------------------------------------------------------------------------------------------
# Tables


def secs(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f} s"


def table(title, header, rows, results, modes):
    print(f"\n{title}\n")
    print("| " + " | ".join([header] + [f"`{m}`" for m in modes]) + " |")
    print("|" + "---|" * (len(modes) + 1))
    for label, cell in rows:
        print("| " + " | ".join([label] + [cell(results[m]) for m in modes]) + " |")


def print_a(results, modes):
    def new_alert(r):
        if r["new_alert"] is None:
            return r["new_layout"]
        return f"{1000 * r['new_alert']:.1f} ms ({r['new_layout']} layout)"

    def lost(r):
        if r["capped"]:
            return (f"{r['lost']} still waiting at the cap ({r['elapsed']:.0f} s): "
                    f"{100 * r['shown'] / r['total']:.1f} % shown; *extrapolated* drain "
                    f"{secs(r['extrapolated'], 0)}")
        return f"**{r['lost']}**"

    table("Scenario A: 10,000 alerts in 200 groups, then 3,000 resolved; `--rate 20/6s`, "
          "fake budget 20 per 6 s", "", [
              ("posted (400 notifications)", lambda r: r["posted"]),
              ("outbox once posted (full-layout estimate)",
               lambda r: f"{r['estimate']:.0f} messages"),
              ("messages used (markdown or text)", lambda r: str(r["messages"])),
              ("file messages (uploads accepted, refused)",
               lambda r: f"{r['files']} ({r['uploads']}, {r['uploads_refused']})"),
              ("refused sends", lambda r: r["refused"]),
              ("most messages accepted in any 6 s (all sends)",
               lambda r: f"{r['max_window']} ({r['max_window_all']})"),
              ("worst delay, acceptance → latest state shown", lambda r: secs(r["worst"])),
              ("median delay", lambda r: secs(r["median"])),
              ("latest state first shown in", lambda r: r["layouts"]),
              ("alerts whose latest state never arrived", lost),
              ("alerts last shown in an older state", lambda r: str(r["stale"])),
              ("last message after the first post", lambda r: secs(r["last_message"])),
              ("one new alert after the storm settled: shown in", new_alert),
              ("digests logged / warnings logged",
               lambda r: f"{r['digest_lines']} / {r['warnings']}"),
          ], results, modes)


def print_b(results, modes):
    def share(k):
        return lambda r: f"{r[k]} of {r['total']} = {100 * r[k] / r['total']:.1f} %"

    table("Scenario B: 1,000 one-alert notifications within a second; `--rate 20/60s`, fake "
          "budget 20 per 60 s (times from the first post)", "", [
              ("posted (4 connections)", lambda r: r["posted"]),
              ("first message", lambda r: secs(r["first"], 2)),
              ("readable at 60 s", share("r60")),
              ("messages + file messages in the first 60 s", lambda r: f"{r['m60']} + {r['f60']}"),
              ("readable at 120 s", share("r120")),
              ("messages + file messages in the first 120 s",
               lambda r: f"{r['m120']} + {r['f120']}"),
              ("all readable at", lambda r: secs(r["all_at"]) if r["all_at"] else "not by 121 s"),
              ("most messages accepted in any 60 s", lambda r: str(r["max_window"])),
              ("refused sends", lambda r: r["refused"]),
              ("digests logged / warnings logged",
               lambda r: f"{r['digest_lines']} / {r['warnings']}"),
          ], results, modes)


def main():
    argv = sys.argv[1:]
    scenarios = argv[0] if argv else "all"
    modes = {"both": ["storm", "today"]}.get(argv[1] if len(argv) > 1 else "both",
                                             [argv[1]] if len(argv) > 1 else None)
    if scenarios not in ("a", "b", "all") or not modes or set(modes) - {"storm", "today"}:
        sys.exit("usage: benches/storm.py [a|b|all] [storm|today|both]")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.environ.get("WEIXIN_ROBOT_BIN") or os.path.join(root, "target/release/weixin-robot")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not found; build it with `cargo build --release` or set WEIXIN_ROBOT_BIN")
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    logdir = tempfile.mkdtemp(prefix="storm-bench.")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ}; commit: {commit}; "
          f"binary: {binary}; load: {os.getloadavg()[0]:.1f}")
    try:
        check_parser(binary, logdir)
        if scenarios in ("a", "all"):
            print_a({m: scenario_a(binary, m, logdir) for m in modes}, modes)
        if scenarios in ("b", "all"):
            print_b({m: scenario_b(binary, m, logdir) for m in modes}, modes)
    finally:
        for relay in RELAYS:
            relay.stop()
        if os.environ.get("STORM_KEEP") == "1":
            log(f"relay logs kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
