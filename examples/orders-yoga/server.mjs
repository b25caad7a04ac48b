// The example orders service again, as GraphQL Yoga on Node: it answers only to the gateway's context token
// (an RS256 JWT, typ portcullis-context+jwt, aud "orders"), verified with jose before any GraphQL runs, and
// checks again the scope and organization the gateway already enforced. The schema is examples/orders/
// orders.graphql without the gateway's directives.
//
//   PORT=9100 ISSUER=http://127.0.0.1:8000 JWKS_URL=http://127.0.0.1:8000/.well-known/jwks.json node server.mjs
//   (JWKS_FILE=jwks.json instead of JWKS_URL reads the keys from a file; AUDIENCE defaults to "orders")
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { GraphQLError } from 'graphql';
import { createSchema, createYoga } from 'graphql-yoga';
import { createLocalJWKSet, createRemoteJWKSet, jwtVerify } from 'jose';

const { PORT, ISSUER, JWKS_URL, JWKS_FILE, AUDIENCE = 'orders' } = process.env;
if (!PORT || !ISSUER || !(JWKS_URL || JWKS_FILE)) {
  console.error('set PORT, ISSUER and JWKS_URL (or JWKS_FILE)');
  process.exit(2);
}
const jwks = JWKS_FILE
  ? createLocalJWKSet(JSON.parse(readFileSync(JWKS_FILE, 'utf8')))
  : createRemoteJWKSet(new URL(JWKS_URL));
const UNAUTHENTICATED = JSON.stringify({
  errors: [{ message: 'invalid context token', extensions: { code: 'UNAUTHENTICATED' } }],
});

/** The claims of a valid context token for this service, or null for anything else. */
async function verify(authorization = '') {
  const [scheme, token, ...rest] = authorization.split(' ');
  if (scheme.toLowerCase() !== 'bearer' || !token || rest.length) return null;
  try {
    const { payload } = await jwtVerify(token, jwks, {
      issuer: ISSUER,
      audience: AUDIENCE,
      algorithms: ['RS256'],
      typ: 'portcullis-context+jwt',
      maxTokenAge: '60s',
      requiredClaims: ['exp', 'iat', 'org', 'sub'],
    });
    // the gateway names one audience and gives a token at most 60 s of life
    const lifetime = payload.exp - payload.iat;
    if (payload.aud !== AUDIENCE || !(lifetime > 0 && lifetime <= 60)) return null;
    if (typeof payload.org !== 'string' || !payload.org || typeof payload.scope !== 'string') return null;
    return payload;
  } catch {
    return null;
  }
}

const STATUSES = ['PENDING', 'PAID', 'SHIPPED'];
const byOrg = new Map(); // orders per organization, in memory: 25 seeded for an organization seen first
function ordersOf(org) {
  if (!byOrg.has(org)) {
    byOrg.set(org, Array.from({ length: 25 }, (_, i) => {
      const n = i + 1;
      return {
        id: `${org}-y${n}`, total: n * 10, status: STATUSES[i % 3], customer: `customer ${n}`,
        items: [{ sku: `sku-${n}`, quantity: n }], note: `note ${n}`,
      };
    }));
  }
  return byOrg.get(org);
}

/** The caller's organization, once the token's scope holds `scope` and `organizationId` is the token's org. */
function callerOrg(claims, scope, organizationId) {
  if (!claims.scope.split(' ').includes(scope)) {
    throw new GraphQLError(`this operation needs the ${scope} scope`, { extensions: { code: 'FORBIDDEN' } });
  }
  if (organizationId !== undefined && organizationId !== claims.org) {
    throw new GraphQLError('organization mismatch', { extensions: { code: 'FORBIDDEN' } });
  }
  return claims.org;
}
const find = (org, id) => ordersOf(org).find((o) => o.id === id) ?? null;

const typeDefs = /* GraphQL */ `
  type Query {
    orders(first: Int = 10, organizationId: ID!): [Order!]!
    order(id: ID!, organizationId: ID!): Order
    orderStats(organizationId: ID!): OrderStats!
  }
  type Mutation {
    createOrder(input: CreateOrderInput!, organizationId: ID!): Order!
    cancelOrder(id: ID!, organizationId: ID!): Order
  }
  enum OrderStatus { PENDING PAID SHIPPED CANCELLED }
  type Order { id: ID! total: Float! status: OrderStatus! customer: String! items: [LineItem!]! internalNote: String }
  type LineItem { sku: String! quantity: Int! }
  input CreateOrderInput { customer: String! items: [LineItemInput!]! }
  input LineItemInput { sku: String! quantity: Int! price: Float! }
  type OrderStats { count: Int! revenue: Float! }
`;
const resolvers = {
  Query: {
    orders: (_, { first, organizationId }, { claims }) =>
      ordersOf(callerOrg(claims, 'orders:read', organizationId)).slice(0, Math.max(0, Math.min(first ?? 10, 100))),
    order: (_, { id, organizationId }, { claims }) => find(callerOrg(claims, 'orders:read', organizationId), id),
    orderStats: (_, { organizationId }, { claims }) => {
      const orders = ordersOf(callerOrg(claims, 'orders:read', organizationId));
      const revenue = orders.filter((o) => o.status !== 'CANCELLED').reduce((sum, o) => sum + o.total, 0);
      return { count: orders.length, revenue: Math.round(revenue * 100) / 100 };
    },
  },
  Mutation: {
    createOrder: (_, { input, organizationId }, { claims }) => {
      const orders = ordersOf(callerOrg(claims, 'orders:write', organizationId));
      if (!input.items.length || input.items.some((item) => item.quantity < 1)) {
        throw new GraphQLError('an order needs items of quantity 1 or more', { extensions: { code: 'BAD_USER_INPUT' } });
      }
      const total = input.items.reduce((sum, item) => sum + item.quantity * item.price, 0);
      const order = {
        id: `${claims.org}-y${orders.length + 1}`, total: Math.round(total * 100) / 100, status: 'PENDING',
        customer: input.customer, items: input.items.map(({ sku, quantity }) => ({ sku, quantity })), note: null,
      };
      orders.push(order);
      return order;
    },
    cancelOrder: (_, { id, organizationId }, { claims }) => {
      const order = find(callerOrg(claims, 'orders:write', organizationId), id);
      if (order) order.status = 'CANCELLED';
      return order;
    },
  },
  Order: {
    internalNote: (order, _, { claims }) => {
      callerOrg(claims, 'orders:admin');
      return order.note;
    },
  },
};

const yoga = createYoga({ schema: createSchema({ typeDefs, resolvers }), graphqlEndpoint: '/graphql', graphiql: false });

createServer(async (req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path === '/healthz') return res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
  if (path !== '/graphql') return res.writeHead(404).end();
  if (req.method !== 'POST') return res.writeHead(405, { allow: 'POST' }).end();
  const claims = await verify(req.headers.authorization);
  if (!claims) {
    return res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer' }).end(UNAUTHENTICATED);
  }
  return yoga(req, res, { claims });
}).listen(Number(PORT), '127.0.0.1');
