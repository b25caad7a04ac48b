// The bench's orders upstream: a Node `http` server, no dependencies, that answers every POST at once with
// fixed JSON, the same for every caller, so that what stands in front of it is what gets measured.
//
//   node orders.mjs <port> <answer.json> <introspection.json>
//
// <answer.json> is the whole response body for the bench query (10 orders), <introspection.json> the whole
// response body for an introspection query; the bench writes both (bench/forward.py). A request whose body
// mentions `__schema` gets the introspection (GraphQL Hive Gateway introspects the upstream it proxies);
// every other POST gets the orders, whatever its query and variables: the upstream does no GraphQL work.
import { readFileSync } from "node:fs";
import http from "node:http";

const [port, answerPath, introspectionPath] = process.argv.slice(2);
if (!port || !answerPath || !introspectionPath) {
  console.error("usage: node orders.mjs <port> <answer.json> <introspection.json>");
  process.exit(2);
}
// parsed once to check them, then kept as the exact bytes sent
const answer = Buffer.from(JSON.stringify(JSON.parse(readFileSync(answerPath, "utf8"))));
const introspection = Buffer.from(JSON.stringify(JSON.parse(readFileSync(introspectionPath, "utf8"))));
const SCHEMA = Buffer.from("__schema");

function send(response, status, body) {
  response.writeHead(status, { "content-type": "application/json", "content-length": body.length });
  response.end(body);
}

const server = http.createServer((request, response) => {
  if (request.method !== "POST") {
    send(response, 405, Buffer.from('{"errors":[{"message":"POST a GraphQL request"}]}'));
    return;
  }
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    send(response, 200, body.includes(SCHEMA) ? introspection : answer);
  });
});
// keep-alive: connections stay open between requests for as long as a client keeps them
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.listen(Number(port), "127.0.0.1");

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
