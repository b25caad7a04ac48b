// Runs graphql-http's GraphQL-over-HTTP server audit against a URL and prints one JSON line per audit:
//   node audit.mjs http://127.0.0.1:PORT/graphql [header-name header-value]...
// The extra headers (a credential) ride on every request of the audit.
import { auditServer } from 'graphql-http';

const [url, ...pairs] = process.argv.slice(2);
const extra = {};
for (let i = 0; i + 1 < pairs.length; i += 2) extra[pairs[i]] = pairs[i + 1];

async function fetchFn(input, init = {}) {
  const headers = new Headers(init.headers || {});
  for (const [name, value] of Object.entries(extra)) headers.set(name, value);
  return fetch(input, { ...init, headers });
}

const results = await auditServer({ url, fetchFn });
for (const result of results) {
  const line = { id: result.id, name: result.name, status: result.status };
  if (result.status !== 'ok') {
    line.reason = result.reason;
    line.httpStatus = result.response.status;
    line.contentType = result.response.headers.get('content-type');
    try {
      line.body = (await result.response.text()).slice(0, 500);
    } catch {
      // the audit already read the body
    }
  }
  console.log(JSON.stringify(line));
}
