#!/usr/bin/env python3
"""A patient app's home screen: enrolls one new participant with a session
in a week, then asks one call for what is on their calendar today and over
the next three days (GetAgenda), and finds their enrollments by reference
(ListEnrollments). Nothing but grpcio and the server's reflection.
  pip install grpcio grpcio-reflection
  python3 docs/agenda-example.py 127.0.0.1:50051 <token> [ZONE]
"""
import datetime
import sys
import uuid
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address, token = sys.argv[1], sys.argv[2]
zone = sys.argv[3] if len(sys.argv) > 3 else "Europe/Berlin"
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


participant = f"example-{uuid.uuid4().hex[:8]}"
# A week ahead on the participant's own calendar: the pre-session practice
# is under way.
today = datetime.datetime.now(ZoneInfo(zone)).date()
call("Enroll", {
    "request_id": str(uuid.uuid4()),
    "participant_ref": participant,
    "protocol_id": "integration-arc-8w",
    "session_local_time": f"{today + datetime.timedelta(days=7)}T10:00",
    "time_zone": zone,
})

agenda = call("GetAgenda", {"participant_ref": participant})
print(f"today ({agenda['local_date']}, {agenda['time_zone']}) for {participant}:")
for o in agenda.get("occurrences", []):
    print(f"  {o['local_time']}  {o['activity_key']:<22} {o.get('target_minutes', 0):>3} min  "
          f"{o['status'].removeprefix('OCCURRENCE_STATUS_').lower()}")

three = call("GetAgenda", {"participant_ref": participant,
                           "local_date": str(today + datetime.timedelta(days=1)),
                           "end_local_date": str(today + datetime.timedelta(days=3)),
                           "open_only": True})
print(f"next three days: {len(three.get('occurrences', []))} occurrences still to do")

enrollments = call("ListEnrollments", {"participant_ref": participant})["enrollments"]
for e in enrollments:
    print(f"enrollment {e['enrollment_id']}: {e['protocol_id']}, session "
          f"{e['session_local_time']} {e['session_time_zone']}, "
          f"{e['state'].removeprefix('ENROLLMENT_STATE_').lower()}")
