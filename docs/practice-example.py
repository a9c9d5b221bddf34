#!/usr/bin/env python3
"""An offline week, synced twice: logs a week of practice for one new
participant (each evening's journaling with a reflection), syncs the same
entries a second time as an app would after a lost reply, and prints what
Tend kept; then erases the participant (ForgetParticipant: their notes and
who they are). Nothing but grpcio and the server's reflection.

  pip install grpcio grpcio-reflection
  python3 docs/practice-example.py 127.0.0.1:50051 <token>
"""
import base64
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
channel = grpc.insecure_channel(address)
pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
service = pool.FindServiceByName("tend.practice.v1.PracticeLogService")
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


participant = f"example-{uuid.uuid4().hex[:8]}"
# The phone's zone (a fixed UTC-5 here). Days are counted on its calendar,
# not the machine's, so the last evening is always in the past.
phone = datetime.timezone(datetime.timedelta(hours=-5))
today = datetime.datetime.now(phone).date()
# What the app recorded offline, each with the id it made up at the time.
week = []
for back in range(7, 0, -1):
    day = today - datetime.timedelta(days=back)
    week.append((str(uuid.uuid4()), {
        "kind": "soothing-touch", "started_at": f"{day}T08:00:00-05:00", "minutes": 2}))
    week.append((str(uuid.uuid4()), {
        "kind": "journaling-reframe", "started_at": f"{day}T21:00:00-05:00", "minutes": 10,
        # bytes fields travel as base64 in protobuf's JSON mapping.
        "note": base64.b64encode(
            f"Day {7 - back + 1}: the critic said I fell behind; "
            "a friend would say I kept going.".encode()).decode()}))

for sync in (1, 2):
    for entry_id, practice in week:
        call("LogPractice", {"participant_ref": participant, "entry_id": entry_id,
                             "practice": practice})
    print(f"sync {sync}: sent {len(week)} entries")

entries = call("ListEntries", {"participant_ref": participant, "page_size": 100}).get("entries", [])
print(f"kept: {len(entries)} entries")
for e in entries[-2:]:
    print(f"  {e['started_at']}  {e['kind']:<20} {e['minutes']:>3} min  "
          f"{e.get('note_state')}  {e.get('note', '')}")
summary = call("GetSummary", {"participant_ref": participant})
print(f"summary: {summary.get('entries', 0)} entries, {summary.get('minutes', 0)} minutes, "
      f"streak {summary.get('streak_days', 0)} days; by kind: "
      + ", ".join(f"{k['kind']} {k['minutes']} min" for k in summary.get("kinds", [])))

forgot = call("ForgetParticipant", {"participant_ref": participant})
print(f"forgotten: {forgot.get('keys_destroyed', 0)} key destroyed at {forgot['notes_erased_at']}")
try:
    call("ListEntries", {"participant_ref": participant, "page_size": 100})
except grpc.RpcError as e:
    # The minutes stay in the log under an opaque id; nothing names them.
    print(f"after: {e.code().name}: {e.details()}")
