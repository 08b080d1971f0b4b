#!/usr/bin/env python3
"""A stand-in for WeCom's robot webhook, for packaging/check-systemd.sh.

Listens on 127.0.0.1 only, answers every POST with {"errcode":0,"errmsg":"ok"} and appends one
JSON line per request to LOG: {"path": ..., "key": <the key= query value>, "body": <the JSON>}.
It checks only what the check needs: the body is JSON and a key is present (else 400, errcode
40001 for a missing key as WeCom does). Writes the bound port to PORT_FILE.

    fake-wecom.py LOG PORT_FILE [PORT]
"""
import json
import os
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        key = urllib.parse.parse_qs(url.query).get("key", [""])[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.answer(400, {"errcode": 40035, "errmsg": "invalid json"})
        if not key:
            return self.answer(400, {"errcode": 40001, "errmsg": "invalid key"})
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps({"path": url.path, "key": key, "body": body}, ensure_ascii=False) + "\n")
        self.answer(200, {"errcode": 0, "errmsg": "ok"})

    def answer(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    LOG, port_file = sys.argv[1], sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()
