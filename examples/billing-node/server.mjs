// The example billing service again, on Node's http module: the routes and answers of examples/billing
// (Python), so that the gateway's HTTP routes are tried against a second implementation. It answers only to
// the gateway's context token (an RS256 JWT, typ portcullis-context+jwt, aud "billing"), verified with jose
// against the gateway's JWKS before any route but /healthz runs, and checks again what the gateway already
// enforced: the caller's organization, and the billing:write scope to create an invoice.
//
//   PORT=9200 ISSUER=http://127.0.0.1:8000 JWKS_URL=http://127.0.0.1:8000/.well-known/jwks.json node server.mjs
//   (PORT=0 takes a free port: the line "billing-node listening on http://127.0.0.1:<port>" names it once the
//   service answers)
//
// Traces: with OTEL_EXPORTER_OTLP_ENDPOINT (a collector's base URL) it continues the gateway's traces as the
// Python services do (examples/tracing.py): a SERVER span per request, named "<METHOD> <path>", the child of
// the incoming `traceparent` (with its `tracestate`), with `http.response.status_code`; sent with
// OpenTelemetry's SDK to the endpoint's /v1/traces (OTLP/HTTP, protobuf) as service "billing-node", and
// flushed on SIGTERM or SIGINT before the process ends. Without it no OpenTelemetry module is even loaded.
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const { PORT, ISSUER, JWKS_URL, HOST = '127.0.0.1', OTEL_EXPORTER_OTLP_ENDPOINT } = process.env;
if (!PORT || !ISSUER || !JWKS_URL) {
  console.error('set PORT, ISSUER and JWKS_URL');
  process.exit(2);
}
const AUDIENCE = 'billing';
const CONTEXT_TYP = 'portcullis-context+jwt';
const CHUNK = 64 * 1024;
const MAX_DOWNLOAD = 2 ** 30;
const MAX_SLOW_SECONDS = 30;
const MAX_CUSTOMER = 200;
const MAX_AMOUNT = 1_000_000_000;
const MAX_JSON_BODY = 64 * 1024;
const TRUNCATED_DECLARED = 1_000_000;
const TRUNCATED_SENT = 100_000;
// what every download repeats, as examples/billing/app.py makes it (BLOCK there)
const BLOCK = createHash('shake256', { outputLength: CHUNK }).update('portcullis billing downloads').digest();
const CUSTOMERS = ['Ada Lovelace', 'Grace Hopper', 'Alan Turing', 'Barbara Liskov', 'Ken Thompson'];
const STATUSES = ['paid', 'open', 'overdue'];
const HOP_HEADERS = {
  connection: 'X-Custom-Hop',
  'x-custom-hop': '1',
  'keep-alive': 'timeout=5',
  'proxy-authenticate': 'Basic',
  'x-billing': 'yes',
};
const UNAUTHENTICATED = { errors: [{ message: 'invalid context token', extensions: { code: 'UNAUTHENTICATED' } }] };
const jwks = createRemoteJWKSet(new URL(JWKS_URL));
const SERVICE_NAME = 'billing-node';
const EXPORT_TIMEOUT_MS = 5000;

/**
 * The service's tracing, for a collector at `base`: `serve(req, res, path)` records the request's SERVER span
 * (ended when the response closes) and `shutdown()` sends what is queued. OpenTelemetry is imported here only.
 */
async function tracingTo(base) {
  const [api, { W3CTraceContextPropagator }, resources, { BasicTracerProvider, BatchSpanProcessor }, otlp] =
    await Promise.all([
      import('@opentelemetry/api'),
      import('@opentelemetry/core'),
      import('@opentelemetry/resources'),
      import('@opentelemetry/sdk-trace-base'),
      import('@opentelemetry/exporter-trace-otlp-proto'),
    ]);
  const exporter = new otlp.OTLPTraceExporter({
    url: `${base.replace(/\/+$/, '')}/v1/traces`,
    timeoutMillis: EXPORT_TIMEOUT_MS,
  });
  const provider = new BasicTracerProvider({
    resource: resources.defaultResource().merge(resources.resourceFromAttributes({ 'service.name': SERVICE_NAME })),
    spanProcessors: [new BatchSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer(SERVICE_NAME);
  const propagator = new W3CTraceContextPropagator();
  return {
    serve(req, res, path) {
      const parent = propagator.extract(api.ROOT_CONTEXT, req.headers, api.defaultTextMapGetter);
      const span = tracer.startSpan(`${req.method} ${path}`, { kind: api.SpanKind.SERVER }, parent);
      res.once('close', () => {
        if (res.headersSent) span.setAttribute('http.response.status_code', res.statusCode);
        span.end();
      });
    },
    shutdown: () => provider.shutdown(),
  };
}

let tracing = null;
if (OTEL_EXPORTER_OTLP_ENDPOINT) {
  try {
    tracing = await tracingTo(OTEL_EXPORTER_OTLP_ENDPOINT);
  } catch (exc) {
    console.error(`OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry could not be loaded (npm ci): ${exc}`);
    process.exit(2);
  }
}

/** The claims of a valid context token for this service, or null for anything else. */
async function verify(authorization = '') {
  const [scheme, token, ...rest] = authorization.split(' ');
  if (scheme.toLowerCase() !== 'bearer' || !token || rest.length) return null;
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer: ISSUER,
      audience: AUDIENCE,
      algorithms: ['RS256'],
      typ: CONTEXT_TYP,
      maxTokenAge: '60s',
      requiredClaims: ['exp', 'iat', 'sub', 'org'],
    });
    // jose would also take a typ with "application/" before it, a token without kid, and times with fractions
    if (protectedHeader.typ !== CONTEXT_TYP || typeof protectedHeader.kid !== 'string') return null;
    if (!Number.isInteger(payload.exp) || !Number.isInteger(payload.iat)) return null;
    // the gateway names one audience and gives a token at most 60 s of life
    const lifetime = payload.exp - payload.iat;
    if (payload.aud !== AUDIENCE || !(lifetime > 0 && lifetime <= 60)) return null;
    if (typeof payload.org !== 'string' || !payload.org || typeof payload.scope !== 'string') return null;
    return payload;
  } catch {
    return null;
  }
}

function* downloadChunks(size) {
  for (let start = 0; start < size; start += CHUNK) {
    yield size - start >= CHUNK ? BLOCK : BLOCK.subarray(0, size - start);
  }
}

const invoiceId = (org, n) => `inv-${org.slice(0, 8)}-${n}`;
const invoice = (org, n, customer, amount, status) => ({
  id: invoiceId(org, n), organizationId: org, customer, amount, currency: 'EUR', status,
});
const byOrg = new Map(); // invoices per organization, in memory: three seeded for an organization seen first
function invoicesOf(org) {
  if (!byOrg.has(org)) {
    const seeded = (n) => invoice(org, n, CUSTOMERS[n % 5], Math.round(n * 12550) / 100, STATUSES[n % 3]);
    byOrg.set(org, [1, 2, 3].map(seeded));
  }
  return byOrg.get(org);
}

function json(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
const error = (res, status, code, message) => json(res, status, { errors: [{ message, extensions: { code } }] });

/** The customer and amount of `{"customer": string, "amount": number}` and nothing else, or the reason not. */
function invoiceInput(body) {
  let data;
  try {
    data = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch {
    return { problem: 'the body is not JSON' };
  }
  const keys = data !== null && typeof data === 'object' && !Array.isArray(data) ? Object.keys(data).sort() : [];
  if (keys.length !== 2 || keys[0] !== 'amount' || keys[1] !== 'customer') {
    return { problem: 'the body must be {"customer": string, "amount": number}' };
  }
  const { customer, amount } = data;
  if (typeof customer !== 'string' || !customer.trim() || customer.length > MAX_CUSTOMER) {
    return { problem: `customer must be a string of 1 to ${MAX_CUSTOMER} characters` };
  }
  if (typeof amount !== 'number' || !(amount > 0 && amount <= MAX_AMOUNT)) {
    return { problem: `amount must be a number above 0, at most ${MAX_AMOUNT}` };
  }
  return { customer, amount };
}

/** The request's body, or null when it is over MAX_JSON_BODY bytes (read to its end all the same). */
async function jsonBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size <= MAX_JSON_BODY) chunks.push(chunk);
  }
  return size > MAX_JSON_BODY ? null : Buffer.concat(chunks);
}

async function bodyLength(req) {
  let size = 0;
  for await (const chunk of req) size += chunk.length;
  return size;
}

function decoded(path) {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

const routes = {
  'GET /invoices': (req, res, claims) => json(res, 200, invoicesOf(claims.org)),
  'GET /invoices/:id': (req, res, claims, id) => {
    const found = invoicesOf(claims.org).find((i) => i.id === id);
    return found ? json(res, 200, found) : error(res, 404, 'NOT_FOUND', 'no such invoice');
  },
  'POST /invoices': async (req, res, claims) => {
    if (!claims.scope.split(' ').includes('billing:write')) {
      return error(res, 403, 'FORBIDDEN', 'creating an invoice needs the billing:write scope');
    }
    const body = await jsonBody(req);
    if (body === null) return error(res, 413, 'PAYLOAD_TOO_LARGE', `the body is over ${MAX_JSON_BODY} bytes`);
    const input = invoiceInput(body);
    if (input.problem) return error(res, 400, 'BAD_REQUEST', input.problem);
    const invoices = invoicesOf(claims.org);
    const created = invoice(claims.org, invoices.length + 1, input.customer, input.amount, 'open');
    invoices.push(created);
    return json(res, 201, created, { location: `/invoices/${created.id}` });
  },
  'POST /uploads': async (req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of req) {
      hash.update(chunk);
      bytes += chunk.length;
    }
    return json(res, 200, { bytes, sha256: hash.digest('hex') });
  },
  'GET /downloads/:size': async (req, res, claims, text) => {
    if (!/^[0-9]{1,10}$/.test(text) || Number(text) > MAX_DOWNLOAD) {
      return error(res, 400, 'BAD_REQUEST', `size must be a whole number of bytes, at most ${MAX_DOWNLOAD}`);
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': Number(text) });
    return pipeline(Readable.from(downloadChunks(Number(text))), res).catch(() => {});
  },
  'GET /echo': async (req, res, claims) => {
    const [rawPath, query = ''] = splitOnce(req.url, '?');
    const headers = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      headers.push([req.rawHeaders[i].toLowerCase(), req.rawHeaders[i + 1]]);
    }
    const seen = { method: req.method, path: decoded(rawPath), rawPath, query, headers, claims };
    if (req.method === 'POST') seen.bodyLength = await bodyLength(req);
    return json(res, 200, seen);
  },
  'GET /session': (req, res) => {
    const cookie = `billing_session=${randomBytes(18).toString('base64url')}; HttpOnly; Path=/`;
    return json(res, 200, { status: 'ok' }, { 'set-cookie': cookie });
  },
  'GET /truncated': (req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': TRUNCATED_DECLARED });
    res.write(Buffer.concat([...downloadChunks(TRUNCATED_SENT)]), () => res.destroy());
  },
  'GET /slow': async (req, res) => {
    const text = new URL(req.url, 'http://localhost').searchParams.get('seconds') ?? '1';
    const asked = text.trim() ? Number(text) : NaN;
    if (!(Number.isFinite(asked) && asked >= 0)) {
      return error(res, 400, 'BAD_REQUEST', 'seconds must be a number of seconds, 0 or more');
    }
    const seconds = Math.min(asked, MAX_SLOW_SECONDS);
    await sleep(seconds * 1000);
    return json(res, 200, { slept: seconds });
  },
  'GET /hop': (req, res) => json(res, 200, { status: 'ok' }, HOP_HEADERS),
};
routes['POST /echo'] = routes['GET /echo'];

function splitOnce(text, separator) {
  const at = text.indexOf(separator);
  return at < 0 ? [text] : [text.slice(0, at), text.slice(at + 1)];
}

/** The route pattern a (decoded) path matches, and its path parameter if it has one. */
function route(path) {
  for (const pattern of ['/invoices/:id', '/downloads/:size']) {
    const prefix = pattern.slice(0, pattern.indexOf(':'));
    const param = path.slice(prefix.length);
    if (path.startsWith(prefix) && param && !param.includes('/')) return { pattern, param };
  }
  return { pattern: path, param: undefined };
}

const notAllowed = (res, allow) => json(res, 405, { errors: [{ message: 'method not allowed' }] }, { allow });

const server = createServer(async (req, res) => {
  const path = decoded(splitOnce(req.url, '?')[0]);
  tracing?.serve(req, res, path);
  try {
    if (path === '/healthz') return req.method === 'GET' ? json(res, 200, { status: 'ok' }) : notAllowed(res, 'GET');
    const { pattern, param } = route(path);
    const allowed = ['GET', 'POST'].filter((method) => routes[`${method} ${pattern}`]);
    if (!allowed.length) return error(res, 404, 'NOT_FOUND', 'no such route');
    const handler = routes[`${req.method} ${pattern}`];
    if (!handler) return notAllowed(res, allowed.join(', '));
    const claims = await verify(req.headers.authorization);
    if (!claims) return json(res, 401, UNAUTHENTICATED, { 'www-authenticate': 'Bearer' });
    return await handler(req, res, claims, param);
  } catch (exc) {
    if (!res.headersSent) return error(res, 500, 'INTERNAL', 'internal error');
    res.destroy(exc);
  }
});
server.listen(Number(PORT), HOST, () => {
  console.log(`billing-node listening on http://${HOST}:${server.address().port}`);
});

// Traced, a stop sends the spans still queued first (for at most EXPORT_TIMEOUT_MS), then ends the process by
// the same signal, as it would have ended untraced. A second signal ends it at once.
if (tracing) {
  const STOP_SIGNALS = ['SIGTERM', 'SIGINT'];
  const stop = async (signal) => {
    for (const s of STOP_SIGNALS) process.removeListener(s, stop);
    server.close();
    await Promise.race([tracing.shutdown(), sleep(EXPORT_TIMEOUT_MS, undefined, { ref: false })]).catch(() => {});
    process.kill(process.pid, signal);
  };
  for (const s of STOP_SIGNALS) process.on(s, stop);
}
