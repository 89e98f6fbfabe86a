#!/usr/bin/env python3
"""A sample upstream for the clamgate demo and docker-compose.yml (not for production).

GET/HEAD /NAME          serves DIR/NAME as application/octet-stream (404 if absent), with a
                        strong ETag (its SHA-256); /files/NAME and /mirror/NAME serve the same
                        file (the nginx demo's locations). If-Match without that ETag: 412.
POST/PUT /upload/NAME   stores the body as DIR/uploads/NAME and answers 201 with JSON
                        {"stored": NAME, "bytes": N, "sha256": HEX}
GET /healthz            200 "ok"

Only plain file names are accepted (no directories, no "..").
Usage: demo_upstream.py [--bind 127.0.0.1] [--port 8080] [--dir DIR]
"""
import argparse
import hashlib
import http.server
import json
import os
import re
import sys

NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def safe_name(name):
    return name if NAME.match(name) and name not in (".", "..") else None


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "clamgate-demo-upstream"
    protocol_version = "HTTP/1.1"
    root = "."

    def do_GET(self):
        self.serve(send_body=True)

    def do_HEAD(self):
        self.serve(send_body=False)

    def do_POST(self):
        self.store()

    def do_PUT(self):
        self.store()

    def serve(self, send_body):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self.reply(200, b"ok\n", "text/plain", send_body)
        path = path.lstrip("/")
        for prefix in ("files/", "mirror/"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        name = safe_name(path)
        file = os.path.join(self.root, name) if name else None
        if not file or not os.path.isfile(file):
            return self.reply(404, b"not found\n", "text/plain", send_body)
        with open(file, "rb") as f:
            data = f.read()
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:32]
        wanted = self.headers.get("If-Match")
        if wanted is not None and wanted.strip() != "*" and etag not in [w.strip() for w in wanted.split(",")]:
            return self.reply(412, b"precondition failed\n", "text/plain", send_body)
        self.reply(200, data, "application/octet-stream", send_body, etag=etag)

    def store(self):
        path = self.path.split("?", 1)[0]
        name = safe_name(path[len("/upload/"):]) if path.startswith("/upload/") else None
        body = self.read_body()
        if name is None:
            return self.reply(404, b"uploads go to /upload/NAME\n", "text/plain")
        uploads = os.path.join(self.root, "uploads")
        os.makedirs(uploads, exist_ok=True)
        with open(os.path.join(uploads, name), "wb") as f:
            f.write(body)
        answer = {"stored": name, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        self.reply(201, (json.dumps(answer) + "\n").encode(), "application/json")

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def reply(self, status, body, content_type, send_body=True, etag=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: %s %s\n" % (self.address_string(), fmt % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--dir", default=".")
    args = parser.parse_args()
    Handler.root = os.path.abspath(args.dir)
    server = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    print(f"upstream: serving {Handler.root} on http://{args.bind}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
