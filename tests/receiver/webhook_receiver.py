#!/usr/bin/env python3
"""A partner's webhook receiver, for the end-to-end tests: verifies every
delivery with the `standardwebhooks` package (PyPI) and appends what it got
to a JSON-lines log. It can misbehave on purpose: answer 500 to the first N
requests, answer every request with one status, or answer slowly.

  python3 webhook_receiver.py --port P --secret whsec_... --log deliveries.jsonl
      [--fail-first N] [--status CODE] [--slow-ms MS]

Prints "listening <port>" once it accepts connections.
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--secret", required=True)
parser.add_argument("--log", required=True)
parser.add_argument("--fail-first", type=int, default=0)
parser.add_argument("--status", type=int, default=200)
parser.add_argument("--slow-ms", type=int, default=0)
args = parser.parse_args()

webhook = Webhook(args.secret)
lock = threading.Lock()
seen = {"requests": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        received = time.time()
        with lock:
            seen["requests"] += 1
            n = seen["requests"]
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = webhook.verify(body, headers)
            verified = True
        except Exception as e:  # a bad signature is what the test looks for
            payload, verified = None, False
            print(f"verification failed: {e!r}", file=sys.stderr)
        if args.slow_ms:
            time.sleep(args.slow_ms / 1000)
        if not verified:
            status = 400
        elif n <= args.fail_first:
            status = 500
        else:
            status = args.status
        record = {
            "id": headers.get("webhook-id"),
            "verified": verified,
            "status": status,
            "received_at": received,
            "signatures": len(headers.get("webhook-signature", "").split()),
        }
        if payload is not None:
            record["type"] = payload["type"]
            record["timestamp"] = payload["timestamp"]
            record["position"] = payload["data"]["position"]
            record["stream_id"] = payload["data"]["stream_id"]
            record["payload"] = payload["data"]["payload"]
            record["pseudonym_key_id"] = payload["data"].get("pseudonym_key_id")
        with lock, open(args.log, "a") as log:
            log.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
