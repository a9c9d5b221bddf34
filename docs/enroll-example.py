#!/usr/bin/env python3
"""Enrolls one participant on the built-in integration arc and prints their
schedule, with nothing but grpcio and the server's reflection.

  pip install grpcio grpcio-reflection
  python3 docs/enroll-example.py 127.0.0.1:50051 <token> [SESSION] [ZONE]

SESSION is the local date-time of the dosing session (default: 30 days from
today at 10:00), ZONE an IANA zone (default America/New_York).
"""
import datetime
import sys
import uuid
from collections import Counter

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address, token = sys.argv[1], sys.argv[2]
default_session = (datetime.date.today() + datetime.timedelta(days=30)).isoformat() + "T10:00"
session = sys.argv[3] if len(sys.argv) > 3 else default_session
zone = sys.argv[4] if len(sys.argv) > 4 else "America/New_York"

channel = grpc.insecure_channel(address)
pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
service = pool.FindServiceByName("tend.scheduler.v1.ProtocolSchedulerService")
auth = [("authorization", f"Bearer {token}")]


def call(name, body):
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


enrolled = call("Enroll", {
    "request_id": str(uuid.uuid4()),
    # A new participant each run: the same one twice would overlap its own arc.
    "participant_ref": f"example-{uuid.uuid4().hex[:8]}",
    "protocol_id": "integration-arc-8w",
    "session_local_time": session,
    "time_zone": zone,
})
e = enrolled["enrollment"]
print(f"enrollment {e['enrollment_id']}: {e['protocol_id']} v{e['protocol_version']}, "
      f"session {e['session_local_time']} {e['time_zone']} ({e['session_at']}), "
      f"arc {e['arc_start_date']} to {e['arc_end_date']}, {enrolled['occurrence_count']} occurrences")

schedule = call("GetSchedule", {"enrollment_id": e["enrollment_id"]})["occurrences"]
per_week = Counter(o.get("arc_week", 0) for o in schedule)
print("occurrences per arc week:", ", ".join(f"{w:+d}: {n}" for w, n in sorted(per_week.items())))
print("first day and the integration weeks' once-a-week items:")
first_day = schedule[0]["local_date"]
for o in schedule:
    if o["local_date"] == first_day or o["activity_key"] in ("integration-session", "post-scs-sf"):
        print(f"  day {o.get('day', 0):+4d}  {o['local_date']} {o['local_time']} {o['time_zone']:<18} "
              f"{o['scheduled_at']:<22} {o['activity_key']:<22} {o.get('target_minutes', 0):>3} min  "
              f"until {o['window_closes_at']}  {o['status']}")
