// The bench's billing upstream: a Node `http` server, no dependencies, that answers `GET /invoices/1` at once
// with fixed JSON (one invoice), the same for every caller, so that what stands in front of it is what gets
// measured.
//
//   node billing.mjs <port> <invoice.json>
//
// <invoice.json> is the whole response body; the bench writes it (bench/forward_http.py, INVOICE). Any other
// method or path (a query string included) is answered 404. The context token the gateway sends is not
// checked: the upstream does no work of its own.
import { readFileSync } from "node:fs";
import http from "node:http";

const [port, invoicePath] = process.argv.slice(2);
if (!port || !invoicePath) {
  console.error("usage: node billing.mjs <port> <invoice.json>");
  process.exit(2);
}
// parsed once to check it, then kept as the exact bytes sent
const invoice = Buffer.from(JSON.stringify(JSON.parse(readFileSync(invoicePath, "utf8"))));
const notFound = Buffer.from('{"error":"not found"}');

function send(response, status, body) {
  response.writeHead(status, { "content-type": "application/json", "content-length": body.length });
  response.end(body);
}

const server = http.createServer((request, response) => {
  request.resume(); // a body, if any, is read and dropped, so the connection stays usable
  if (request.method === "GET" && request.url === "/invoices/1") {
    send(response, 200, invoice);
  } else {
    send(response, 404, notFound);
  }
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
