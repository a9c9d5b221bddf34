#!/usr/bin/env python3
"""A first call to a running Tend server, with nothing but grpcio and the
server's own reflection (no generated code).

  pip install grpcio grpcio-health-checking grpcio-reflection
  python3 docs/first-call.py 127.0.0.1:50051 <token printed by `tend serve`>
"""
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address, token = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(address)

# Health and reflection answer without a token.
health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
reflection = ProtoReflectionDescriptorDatabase(channel)
print("services:", ", ".join(sorted(reflection.get_services())))

# Every Tend call needs the bearer token.
pool = DescriptorPool(reflection)
method = pool.FindServiceByName("tend.events.v1.EventStreamService").FindMethodByName("ReadStream")
request_type, response_type = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
read_stream = channel.unary_unary(
    "/tend.events.v1.EventStreamService/ReadStream",
    request_serializer=request_type.SerializeToString,
    response_deserializer=response_type.FromString,
)
for metadata in ([], [("authorization", f"Bearer {token}")]):
    try:
        print("ReadStream:", read_stream(request_type(stream_id="practice-1"), metadata=metadata))
    except grpc.RpcError as e:
        label = "with token" if metadata else "without token"
        print(f"ReadStream {label}: {e.code().name}: {e.details()}")
