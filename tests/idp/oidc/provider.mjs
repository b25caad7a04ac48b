// A real OpenID Provider (panva/node-oidc-provider) for the SSO tests, on a loopback port.
// Usage: node provider.mjs <port> <clients.json>
// The login page accepts any login and password (the provider's development interactions); the
// account's claims follow from the login:
//   sub = the login; email = the login when it holds an "@", else <login>@acme.test;
//   email_verified = false only for logins starting with "unverified"; groups = ["portcullis-admins"]
//   for logins starting with "admin", else ["staff"].
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const clients = JSON.parse(readFileSync(process.argv[3], 'utf8'));
const issuer = `http://127.0.0.1:${port}`;

function claimsFor(login) {
  const email = login.includes('@') ? login : `${login}@acme.test`;
  return {
    sub: login,
    email,
    email_verified: !login.startsWith('unverified'),
    name: `Test ${login.split('@')[0]}`,
    groups: login.startsWith('admin') ? ['portcullis-admins'] : ['staff'],
  };
}

const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return claimsFor(id); } };
  },
  // first-party clients: the user is not asked to consent to each scope
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    grant.addOIDCClaims(['email', 'email_verified', 'name', 'groups']);
    await grant.save();
    return grant;
  },
  cookies: { keys: ['portcullis-test-provider-cookie-key'] },
});

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
