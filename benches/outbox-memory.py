#!/usr/bin/env python3
"""Memory of a full outbox, for sizing containers (BENCHMARKS.md). A fake WeCom on 127.0.0.1
answers HTTP 500, so nothing drains; unique 50-alert notifications are posted until the first
503 (at most 20,000 or 60 s); prints RSS idle and full, and the outbox gauges.
Usage: benches/outbox-memory.py BINARY [relay args...]"""
import sys, os, json, time, socket, subprocess, http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
fp = free_port(); rp = free_port()
class Down(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(500); self.send_header("Content-Length", "4"); self.end_headers()
        self.wfile.write(b"down")
fake = ThreadingHTTPServer(("127.0.0.1", fp), Down)
threading.Thread(target=fake.serve_forever, daemon=True).start()
args = [sys.argv[1], "--port", str(rp), "--key", f"http://127.0.0.1:{fp}/cgi-bin/webhook/send?key=k", "--retry-initial", "30s", "--retry-max", "60s"] + sys.argv[2:]
relay = subprocess.Popen(args, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def rss():
    for l in open(f"/proc/{relay.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
for _ in range(100):
    try:
        c = http.client.HTTPConnection("127.0.0.1", rp, timeout=2); c.request("GET", "/healthz"); c.getresponse().read(); break
    except Exception: time.sleep(0.05)
print("idle RSS MiB", rss())
c = http.client.HTTPConnection("127.0.0.1", rp, timeout=10)
t0 = time.time(); n = 0; codes = {}
while n < 20000 and time.time() - t0 < 60:
    alerts = [{"status": "firing", "labels": {"alertname": f"Mem{n%8}", "instance": f"host-{n}-{i}.example:9100", "job": "node", "severity": "critical", "namespace": "prod", "pod": f"pod-{n}-{i}"},
               "annotations": {"summary": f"summary {n} {i} " + "x"*80, "description": "d"*200},
               "startsAt": "2026-12-02T05:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom.example/graph?g0.expr=up", "fingerprint": f"{n:08x}{i:08x}"} for i in range(50)]
    body = json.dumps({"version": "4", "status": "firing", "receiver": "r", "groupKey": f"{{}}:{{g=\"{n}\"}}", "groupLabels": {"g": str(n)}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am.example:9093", "truncatedAlerts": 0, "alerts": alerts})
    c.request("POST", "/alertinfo", body, {"Content-Type": "application/json"}); r = c.getresponse(); r.read()
    codes[r.status] = codes.get(r.status, 0) + 1; n += 1
    if r.status == 503: break
print("posted", n, "codes", codes, "body bytes", len(body), "RSS MiB", rss())
c2 = http.client.HTTPConnection("127.0.0.1", rp, timeout=5); c2.request("GET", "/metrics"); m = c2.getresponse().read().decode()
print([l for l in m.splitlines() if l.startswith("weixin_robot_outbox") or l.startswith("process_resident")])
relay.kill(); fake.shutdown()
