#!/usr/bin/env python3
"""An SCS-SF at baseline and at week +4 for one new participant, and the
change between them with the reliable change index. Nothing but grpcio and
the server's reflection.

  pip install grpcio grpcio-reflection
  python3 docs/assessment-example.py 127.0.0.1:50051 <token> [SD]

SD is the reference standard deviation of the SCS-SF total to use (none is
published with the key: give your study's own; default 0.6 for the demo).
"""
import datetime
import sys
import uuid

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address, token = sys.argv[1], sys.argv[2]
sd = float(sys.argv[3]) if len(sys.argv) > 3 else 0.6
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


participant = f"example-{uuid.uuid4().hex[:8]}"
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
session = (now + datetime.timedelta(days=28)).strftime("%Y-%m-%dT10:00")
call("tend.scheduler.v1.ProtocolSchedulerService", "Enroll", {
    "request_id": str(uuid.uuid4()), "participant_ref": participant,
    "protocol_id": "integration-arc-8w", "session_local_time": session, "time_zone": "UTC"})


def submit(values, at):
    return call("tend.assessment.v1.AssessmentService", "SubmitResponses", {
        "participant_ref": participant, "request_id": str(uuid.uuid4()),
        "instrument_id": "scs-sf",
        "answers": [{"item": i + 1, "answer": v} for i, v in enumerate(values)],
        "administered_at": at.isoformat().replace("+00:00", "Z")})["assessment"]


# In a real arc these are eight weeks apart; here a minute apart.
for label, values, at in [
        # A minute earlier, but not before today's midnight: the arc (and
        # so the baseline's window) starts then.
        ("baseline", [4, 2, 2, 4, 2, 2, 2, 4, 4, 2, 4, 4],
         max(now - datetime.timedelta(minutes=1), now.replace(hour=0, minute=0, second=0))),
        ("week +4 ", [2, 4, 3, 5, 4, 3, 4, 2, 1, 3, 4, 2], now)]:
    a = submit(values, at)
    s = a["scorings"][-1]
    print(f"{label}: total {s['total']['exact']} = {s['total']['value']:.4f} ({s['band']}), "
          f"{s['method']} v{s['instrument_version']}")

change = call("tend.assessment.v1.AssessmentService", "GetChange", {
    "participant_ref": participant, "instrument_id": "scs-sf",
    "sd": {"value": sd, "source": "demo value given on the command line"}})
t = change["total"]
rc = t["reliable_change"]
print(f"change: {t['absolute']['exact']} = {t['absolute']['value']:+.4f}, {t['percent']:+.2f}%")
print(f"reliable change: RC {rc['rc']:.2f} (S_diff {rc['s_diff']:.5f}; SD {rc['sd']['value']} "
      f"from {rc['sd']['source']}; r {rc['reliability']['value']} from {rc['reliability']['source']}) "
      f"-> {rc['verdict']}")
for sub in change["subscales"]:
    c = sub["change"]
    pct = f"{c['percent']:+.1f}%" if "percent" in c else "n/a"
    print(f"  {sub['key']:<20} {c['baseline']['exact']:>4} -> {c['current']['exact']:>4}  "
          f"({c['absolute']['exact']}, {pct}){'' if sub.get('interpretable') else '  [not interpretable alone]'}")
