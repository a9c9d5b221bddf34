#!/usr/bin/env python3
"""An analysis-ready export over gRPC, as a study data system takes it: streams
ExportService.Export for one of the tenant's recipients (Parquet), writes the
files, checks each against the SHA-256 the server sends, and reads them with
pandas: who is in it, and adherence by arc week.

  pip install grpcio grpcio-reflection pandas pyarrow
  python3 docs/export-example.py 127.0.0.1:50051 <token> <recipient> [out-dir]
"""
import hashlib
import pathlib
import sys
import tempfile

import grpc
import pandas as pd
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address, token, recipient = sys.argv[1], sys.argv[2], sys.argv[3]
out = pathlib.Path(sys.argv[4] if len(sys.argv) > 4 else tempfile.mkdtemp(prefix="tend-export-"))
out.mkdir(parents=True, exist_ok=True)
channel = grpc.insecure_channel(address)
pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
service = "tend.exports.v1.ExportService"
m = pool.FindServiceByName(service).FindMethodByName("Export")
request_type, response_type = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
export = channel.unary_stream(
    f"/{service}/Export",
    request_serializer=request_type.SerializeToString,
    response_deserializer=response_type.FromString,
)
request = json_format.ParseDict(
    {"recipient_id": recipient, "format": "EXPORT_FORMAT_PARQUET"}, request_type())

files = {}
for part in export(request, metadata=[("authorization", f"Bearer {token}")]):
    which = part.WhichOneof("part")
    if which == "started":
        print(f"export at log position {part.started.position} "
              f"(as of {part.started.as_of.ToJsonString()}), pseudonym key {part.started.pseudonym_key_id}")
    elif which == "chunk":
        data = files.setdefault(part.chunk.file, bytearray())
        assert part.chunk.offset == len(data), "chunks arrive in order"
        data.extend(part.chunk.data)
    else:
        for f in part.finished.files:
            assert hashlib.sha256(files[f.file]).hexdigest() == f.sha256, f.file
            (out / f.file).write_bytes(files[f.file])
        print(f"{len(part.finished.files)} files written to {out}, each matching its SHA-256")

participants = pd.read_parquet(out / "participants.parquet")
occurrences = pd.read_parquet(out / "occurrences.parquet")
print(f"participants: {len(participants)} sharing for research; phases: "
      + ", ".join(f"{k} {v}" for k, v in participants.phase.value_counts().sort_index().items() if v))
current = occurrences.merge(participants[["participant", "enrollment"]])
by_week = current.groupby("arc_week").status.apply(
    lambda s: s.isin(["done", "late"]).sum() / len(s))
print("adherence by arc week (done or late over due): "
      + "  ".join(f"{w:+d}: {r:.0%}" for w, r in by_week.items()))
