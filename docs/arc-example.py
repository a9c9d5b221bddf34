#!/usr/bin/env python3
"""What a study lead and a practitioner see: the cohort on one protocol,
the participants with open warnings, and one participant's arc. Nothing but
grpcio and the server's reflection. Fill a tenant first with `tend demo`.

  pip install grpcio grpcio-reflection
  python3 docs/arc-example.py 127.0.0.1:50051 <token> [protocol_id]
"""
import json
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address, token = sys.argv[1], sys.argv[2]
protocol = sys.argv[3] if len(sys.argv) > 3 else "integration-arc-8w"
channel = grpc.insecure_channel(address)
pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
auth = [("authorization", f"Bearer {token}")]


def call(name, body):
    service = pool.FindServiceByName("tend.arc.v1.ArcService")
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


def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


status = call("GetProjectionStatus", {})["projections"][0]
print(f"arc projection: position {status.get('position', 0)} of {status.get('head', 0)}, "
      f"{status.get('seconds_behind', 0):.1f} s behind")

cohort = call("GetCohort", {"protocol_id": protocol})
print(f"\ncohort on {protocol}: {cohort.get('enrolled', 0)} enrolled, {cohort.get('active', 0)} active")
for p in cohort.get("phases", []):
    print(f"  {p['phase'].removeprefix('PHASE_').lower():<15} {p['participants']}")
print("  adherence by arc week (done / due across participants: q1 | median | q3)")
for w in cohort.get("weeks", []):
    print(f"    week {w.get('arc_week', 0):+d}: {pct(w.get('q1', 0))} | {pct(w.get('median', 0))} | "
          f"{pct(w.get('q3', 0))}   ({w['participants']} participants)")
scs = cohort.get("scs_change_percent")
if scs:
    print(f"  SCS total change from baseline: {scs['mean']:+.1f}% "
          f"(95% CI {scs['low']:+.1f} to {scs['high']:+.1f}, n = {scs['n']}); "
          f"MSC benchmark +{cohort['benchmark_percent']:.0f}%")
for f in cohort.get("open_flags", []):
    print(f"  open {f['kind'].removeprefix('FLAG_KIND_').lower()}: {f['participants']}")

flagged = call("ListArcs", {"protocol_id": protocol, "flag": "FLAG_KIND_CRITIC_RETURNS",
                            "phase": "PHASE_INTEGRATION", "page_size": 5}).get("arcs", [])
print(f"\nin integration with the critic returning (first {len(flagged)}):")
for a in flagged:
    print(f"  {a['participant_ref']}: day {a.get('days_from_session', 0):+d}, "
          f"adherence {pct(a.get('adherence'))}")

arcs = flagged or call("ListArcs", {"protocol_id": protocol, "page_size": 1}).get("arcs", [])
if arcs:
    arc = call("GetArc", {"participant_ref": arcs[0]["participant_ref"]})["arc"]
    e = arc.get("enrollment", {})
    print(f"\n{arc['participant_ref']}: {arc['phase'].removeprefix('PHASE_').lower()}, "
          f"session {e.get('session_at')} {e.get('time_zone')}, day {e.get('days_from_session', 0):+d}")
    for w in arc.get("weeks", []):
        a = w["adherence"]
        print(f"  week {w.get('arc_week', 0):+d}: {a.get('done', 0) + a.get('late', 0)}/{a.get('due', 0)} done, "
              f"{a.get('minutes_done', 0)} of {a.get('minutes_planned', 0)} planned minutes")
    print(f"  streak {arc.get('streak_days', 0)} days; last practice {arc.get('last_practice_at', '-')}")
    for s in arc.get("assessments", []):
        change = s.get("change", {}).get("total", {})
        label = "baseline" if s.get("is_baseline") else f"{change.get('percent', 0):+.1f}% from baseline"
        print(f"  {s['instrument_id']} day {s.get('days_from_session', 0):+d}: total {s.get('total', 0):.2f} ({label})")
    for f in arc.get("open_flags", []):
        print(f"  warning {f['kind'].removeprefix('FLAG_KIND_').lower()}: {json.loads(f['evidence_json'])}")
