#!/usr/bin/env python3
"""An HTTPS server of MTA-STS policies for mailqueue's integration tests.

It listens on 127.0.0.1 on a port the kernel picks, prints "PORT <n>" on
stdout once it accepts connections, and answers every GET with the file
named after the request's Host (port left out) in the directory given
with --policies, read at each request so that a test can change a policy
between fetches:

  GET /.well-known/mta-sts.txt  Host: mta-sts.d.test  ->  <policies>/mta-sts.d.test

A missing file is a 404. Each request is recorded as one JSON line in
<dir>/requests.jsonl (host, path, status).
"""

import argparse
import http.server
import json
import os
import ssl
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True, help="where to record requests")
    p.add_argument("--policies", required=True, help="directory of policy files, by host name")
    p.add_argument("--tls-cert", required=True, help="PEM certificate")
    p.add_argument("--tls-key", required=True, help="PEM key")
    p.add_argument("--content-type", default="text/plain; charset=utf-8")
    args = p.parse_args()
    log = open(os.path.join(args.dir, "requests.jsonl"), "a", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
            path = os.path.join(args.policies, os.path.basename(host))
            try:
                with open(path, "rb") as f:
                    body = f.read()
                status = 200
            except OSError:
                body, status = b"not found\n", 404
            log.write(json.dumps({"host": host, "path": self.path, "status": status}) + "\n")
            self.send_response(status)
            self.send_header("Content-Type", args.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("PORT %d" % server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
