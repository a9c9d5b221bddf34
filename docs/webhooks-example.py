#!/usr/bin/env python3
"""A partner backend that hears of events without holding a stream open:
runs a small receiver on this machine, registers it as a webhook endpoint
for practice events, logs one practice entry, and prints the delivery it
gets, its signature checked with the `standardwebhooks` package. Then it
shows the endpoint's delivery status and removes it. Nothing but grpcio,
the server's reflection and standardwebhooks.
  pip install grpcio grpcio-reflection standardwebhooks
  python3 docs/webhooks-example.py 127.0.0.1:50051 <token>
The server must let webhooks reach this machine: with the embedded database
it does; otherwise set TEND_WEBHOOK_ALLOW_HTTP_HOSTS=127.0.0.1 and
TEND_WEBHOOK_ALLOW_NETWORKS=127.0.0.0/8 (never in production).
"""
import datetime
import json
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from standardwebhooks import Webhook

address, token = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(address)
pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
auth = [("authorization", f"Bearer {token}")]


def call(service_name, name, body):
    service = pool.FindServiceByName(service_name)
    method = service.FindMethodByName(name)
    request_type = GetMessageClass(method.input_type)
    response_type = GetMessageClass(method.output_type)
    stub = channel.unary_unary(
        f"/{service.full_name}/{name}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = stub(json_format.ParseDict(body, request_type()), metadata=auth)
    return json_format.MessageToDict(response, preserving_proto_field_name=True)


WEBHOOKS = "tend.webhooks.v1.WebhookService"
deliveries = queue.Queue()
verifier = {}


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = verifier["webhook"].verify(body, headers)
            deliveries.put((headers["webhook-id"], event))
            self.send_response(204)
        except Exception as e:  # an unsigned or tampered request
            print(f"refused a delivery: {e}")
            self.send_response(400)
        self.end_headers()

    def log_message(self, *_):
        pass


receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{receiver.server_address[1]}/tend-events"

created = call(WEBHOOKS, "CreateEndpoint", {
    "request_id": str(uuid.uuid4()), "url": url, "categories": ["practice"]})
endpoint = created["endpoint"]
verifier["webhook"] = Webhook(created["secret"])
print(f"endpoint {endpoint['endpoint_id']} -> {url} (secret {created['secret'][:10]}...)")

started = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=30))
call("tend.practice.v1.PracticeLogService", "LogPractice", {
    "participant_ref": f"example-{uuid.uuid4().hex[:8]}", "entry_id": str(uuid.uuid4()),
    "practice": {"kind": "soothing-touch", "minutes": 3, "time_zone": "UTC",
                 "started_at": started.strftime("%Y-%m-%dT%H:%M:%S")}})

webhook_id, event = deliveries.get(timeout=15)
print(f"delivered and verified: webhook-id {webhook_id} = log position {event['data']['position']}, "
      f"{event['type']} on {event['data']['stream_id'].split('-')[0]}-..., "
      f"{event['data']['payload']['minutes']} minutes")

# Positions are saved within 200 ms of a delivery.
time.sleep(0.5)
status = call(WEBHOOKS, "GetEndpoint", {"endpoint_id": endpoint["endpoint_id"]})["endpoint"]
delivery = status["delivery"]
print(f"status: {status['state'].removeprefix('ENDPOINT_STATE_').lower()}, delivered up to "
      f"{delivery.get('delivered_position', 0)} of {delivery.get('head_position', 0)}, "
      f"lag {delivery.get('lag_seconds', 0):.1f} s")
call(WEBHOOKS, "DeleteEndpoint", {"endpoint_id": endpoint["endpoint_id"]})
print("endpoint removed")
receiver.shutdown()
