// A browser portal's calls, made from Node with Connect's gRPC-Web
// transport (the one a web app bundles): no generated code, the services
// come from Tend's descriptor set. Prints one JSON line of what it saw;
// tests/tests/grpc_web.rs runs it against the real server and checks it.
//
// usage: node grpc-web.mjs <descriptor set> <base url> <token> <allowed origin>
// (a private CA: NODE_EXTRA_CA_CERTS=ca.crt)
import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

const [descriptorPath, baseUrl, token, origin] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorPath)));
const service = (name) => {
  const s = registry.getService(name);
  if (!s) throw new Error(`${name} is not in the descriptor set`);
  return s;
};
const transport = createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
const scheduler = createClient(service("tend.scheduler.v1.ProtocolSchedulerService"), transport);
const events = createClient(service("tend.events.v1.EventStreamService"), transport);
const headers = { authorization: `Bearer ${token}` };
const codeOf = (e) => Code[ConnectError.from(e).code];
const seen = {};

// What a browser asks before its first call: the allowed origin, then another.
const preflight = async (from) => {
  const r = await fetch(`${baseUrl}/tend.scheduler.v1.ProtocolSchedulerService/ListProtocols`, {
    method: "OPTIONS",
    headers: {
      Origin: from,
      "Access-Control-Request-Method": "POST",
      "Access-Control-Request-Headers": "authorization,content-type,x-grpc-web,x-user-agent",
    },
  });
  return {
    status: r.status,
    allowOrigin: r.headers.get("access-control-allow-origin"),
    allowHeaders: r.headers.get("access-control-allow-headers"),
  };
};
seen.preflight = await preflight(origin);
seen.preflightOther = await preflight("https://elsewhere.example");

// Unary, authenticated.
const listed = await scheduler.listProtocols({}, { headers });
seen.protocols = listed.protocols.map((p) => p.protocolId);

// Refusals come back as gRPC statuses.
try {
  await scheduler.listProtocols({});
  seen.withoutToken = "OK";
} catch (e) {
  seen.withoutToken = codeOf(e);
  seen.withoutTokenMessage = ConnectError.from(e).rawMessage;
}
try {
  await scheduler.getEnrollment({ enrollmentId: "not-a-uuid" }, { headers });
  seen.badArgument = "OK";
} catch (e) {
  seen.badArgument = codeOf(e);
  seen.badArgumentMessage = ConnectError.from(e).rawMessage;
}

// A server stream: the tenant's events from the start, until three came.
const abort = new AbortController();
seen.streamed = [];
try {
  for await (const m of events.subscribe({ afterPosition: 0n }, { headers, signal: abort.signal })) {
    if (m.message.case === "event") {
      seen.streamed.push(m.message.value.eventType);
      if (seen.streamed.length === 3) abort.abort();
    }
  }
} catch (e) {
  if (ConnectError.from(e).code !== Code.Canceled) throw e;
}
console.log(JSON.stringify(seen));
