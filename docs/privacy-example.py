#!/usr/bin/env python3
"""Consent, a pseudonymous stream and erasure, with nothing but grpcio and
the server's reflection: defines a consent document and a protocol that
needs consent, shows an enrollment refused without it, records consent and
enrolls, reads the recipient's pseudonymous stream (when the server has a
recipient for the tenant, TEND_RECIPIENT_KEYS), then erases the person.

  pip install grpcio grpcio-reflection
  python3 docs/privacy-example.py 127.0.0.1:50051 <token>
"""
import datetime
import hashlib
import json
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
auth = [("authorization", f"Bearer {token}")]


def method(service, name):
    m = pool.FindServiceByName(service).FindMethodByName(name)
    return m, GetMessageClass(m.input_type), GetMessageClass(m.output_type)


def call(service, name, body):
    m, request_type, response_type = method(service, name)
    stub = channel.unary_unary(
        f"/{service}/{name}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = stub(json_format.ParseDict(body, request_type()), metadata=auth)
    return json_format.MessageToDict(response, preserving_proto_field_name=True)


PRIVACY = "tend.privacy.v1.PrivacyService"
SCHEDULER = "tend.scheduler.v1.ProtocolSchedulerService"
run = uuid.uuid4().hex[:6]
reference = f"MRN-{run}"
document = f"study-consent-{run}"
protocol = f"consented-arc-{run}"

call(PRIVACY, "DefineConsentDocument", {"document": {
    "document_id": document, "version": 1,
    "purposes": ["CONSENT_PURPOSE_PROTOCOL", "CONSENT_PURPOSE_RESEARCH_SHARING"]}})
call(SCHEDULER, "CreateProtocol", {"protocol": {
    "protocol_id": protocol, "title": "Daily practice, with consent",
    "weeks_before": 1, "weeks_after": 1,
    "activities": [{"key": "touch", "practice": {"practice": "soothing-touch"},
                    "days": {"first": -7, "last": 7}, "cadence": "CADENCE_DAILY",
                    "times": ["09:00"], "target_minutes": 5, "window_minutes": 600}],
    "required_purposes": ["CONSENT_PURPOSE_PROTOCOL"]}})
call(SCHEDULER, "PublishProtocol", {"protocol_id": protocol, "version": 1})
print(f"document {document} v1 and protocol {protocol} (needs CONSENT_PURPOSE_PROTOCOL)")

session = (datetime.date.today() + datetime.timedelta(days=3)).isoformat() + "T10:00"
enroll = {"participant_ref": reference, "protocol_id": protocol,
          "session_local_time": session, "time_zone": "Europe/London"}
try:
    call(SCHEDULER, "Enroll", {"request_id": str(uuid.uuid4()), **enroll})
except grpc.RpcError as e:
    print(f"enroll without consent: {e.code().name}: {e.details()}")

signed = f"the signed form of {reference}".encode()  # the partner keeps the document
given = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5))
call(PRIVACY, "RecordConsent", {
    "participant_ref": reference, "request_id": str(uuid.uuid4()),
    "document_id": document, "document_version": 1,
    "purposes": ["CONSENT_PURPOSE_PROTOCOL", "CONSENT_PURPOSE_RESEARCH_SHARING"],
    "given_at": given.isoformat().replace("+00:00", "Z"),
    "method": "CONSENT_METHOD_ELECTRONIC_SIGNATURE",
    "evidence_sha256": hashlib.sha256(signed).hexdigest()})
enrollment = call(SCHEDULER, "Enroll", {"request_id": str(uuid.uuid4()), **enroll})["enrollment"]
participant_id = enrollment["participant_id"]
print(f"enrolled after consent: {reference} is {participant_id} in every event")

consent = call(PRIVACY, "GetConsent", {"participant_ref": reference})["consent"]
print("granted now: " + ", ".join(g["purpose"] for g in consent["granted"]))

recipients = call(PRIVACY, "ListRecipients", {}).get("recipients", [])
if not recipients:
    print("no recipient configured for this tenant (TEND_RECIPIENT_KEYS): no pseudonymous stream")
else:
    recipient = recipients[0]["recipient_id"]
    m, request_type, response_type = method("tend.events.v1.EventStreamService", "Subscribe")
    subscribe = channel.unary_stream(
        "/tend.events.v1.EventStreamService/Subscribe",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString)
    request = json_format.ParseDict({"categories": ["participant"], "pseudonymous": {
        "recipient_id": recipient, "relative_days": True}}, request_type())
    print(f"pseudonymous stream for {recipient}:")
    head = int(call("tend.events.v1.EventStreamService", "ReadStream", {
        "stream_id": f"participant-{participant_id}", "direction": "READ_DIRECTION_BACKWARDS",
        "max_count": 1})["events"][0]["position"])
    stream = subscribe(request, metadata=auth)
    for message in stream:
        event = message.event if message.HasField("event") else None
        position = event.position if event else message.checkpoint.position
        if event and event.stream_id.endswith(participant_id):
            raise SystemExit("the pseudonymous stream named the participant's id")
        if event and event.event_type in ("ConsentRecorded", "ParticipantEnrolled"):
            body = json.loads(event.payload_json)
            print(f"  {event.event_type:<20} {event.stream_id}  "
                  + ", ".join(f"{k}={json.dumps(body[k])}" for k in ("given_at", "session_at") if k in body))
        if position >= head:
            stream.cancel()
            break

erased = call(PRIVACY, "EraseParticipant", {
    "participant_ref": reference, "request_id": str(uuid.uuid4()),
    "reason": "ERASURE_REASON_PARTICIPANT_REQUEST"})
print(f"erased at {erased['erased_at']}; their numbers stay under {erased['participant_id']}")
try:
    call(PRIVACY, "GetConsent", {"participant_ref": reference})
except grpc.RpcError as e:
    print(f"looking {reference} up again: {e.code().name}: {e.details()}")
