// A Connect service on @connectrpc/connect-node, and its generated-style client, for
// tests/integration/test_rpc_answers.py: what real Connect and gRPC-Web clients see of
// gateproxy's gated answers.
//
//   node rpc.js serve PORT            a server on 127.0.0.1:PORT (HTTP/1.1), "listening" on stdout
//   node rpc.js call URL PROTOCOL METHOD TEXT
//                                      PROTOCOL: connect | grpc-web; METHOD: Ping | Watch;
//                                      one JSON line: {"texts": [...]} or {"code", "message"}
//
// The service, agyn.test.v1.Echo, is described in code (what protoc-gen-es generates from
// a .proto): Ping(Text) returns (Text), Watch(Text) returns (stream Text).
import http from "node:http";
import { create } from "@bufbuild/protobuf";
import { createFileRegistry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  connectNodeAdapter,
  createConnectTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

const file = create(FileDescriptorProtoSchema, {
  name: "agyn/test/v1/echo.proto",
  package: "agyn.test.v1",
  syntax: "proto3",
  messageType: [{ name: "Text", field: [{ name: "text", number: 1, type: 9, label: 1, jsonName: "text" }] }],
  service: [{
    name: "Echo",
    method: [
      { name: "Ping", inputType: ".agyn.test.v1.Text", outputType: ".agyn.test.v1.Text" },
      { name: "Watch", inputType: ".agyn.test.v1.Text", outputType: ".agyn.test.v1.Text", serverStreaming: true },
    ],
  }],
});
const Echo = createFileRegistry(file, () => undefined).getService("agyn.test.v1.Echo");

async function serve(port) {
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(Echo, {
        async ping(request) {
          return { text: `pong: ${request.text}` };
        },
        async *watch(request) {
          for (let i = 1; i <= 3; i++) yield { text: `${request.text} ${i}` };
        },
      });
    },
  });
  http.createServer(handler).listen(port, "127.0.0.1", () => console.log("listening"));
}

async function call(baseUrl, protocol, method, text) {
  const options = { baseUrl, httpVersion: "1.1" };
  const transport = protocol === "grpc-web" ? createGrpcWebTransport(options) : createConnectTransport(options);
  const client = createClient(Echo, transport);
  try {
    const texts = [];
    if (method === "Ping") {
      texts.push((await client.ping({ text })).text);
    } else {
      for await (const answer of client.watch({ text })) texts.push(answer.text);
    }
    console.log(JSON.stringify({ texts }));
  } catch (error) {
    const err = ConnectError.from(error);
    console.log(JSON.stringify({ code: Code[err.code], message: err.rawMessage }));
  }
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "serve") await serve(Number(args[0]));
else await call(...args);
