// GraphiQL on this gateway's /graphql, from the gateway's own copies of GraphiQL and React.
// A browser session (the __Host-portcullis cookie) needs its CSRF token on every POST: it is read from the
// readable __Host-portcullis-csrf cookie, as any frontend does (docs/authentication.md).
(function () {
  'use strict';
  var headers = {};
  var csrf = document.cookie.split('; ').filter(function (c) {
    return c.indexOf('__Host-portcullis-csrf=') === 0;
  })[0];
  if (csrf) {
    headers['x-csrf-token'] = csrf.slice(csrf.indexOf('=') + 1);
  }
  // shown until the person writes their own (GraphiQL keeps that in the browser's storage)
  var defaultQuery = [
    '# Portcullis GraphiQL',
    '#',
    '# Introspection answers per caller: signed out, the schema holds only the public mutations, and the',
    '# documentation explorer cannot show it. Sign in (in dev, the demo owner below), put the token in the',
    '# Headers tab as {"Authorization": "Bearer <accessToken>"}, run any operation, then press',
    '# "Re-fetch GraphQL schema" (the circular arrows at the bottom left).',
    '',
    'mutation SignIn {',
    '  login(email: "owner@acme.test", password: "portcullis-demo") {',
    '    accessToken',
    '  }',
    '}',
    '',
  ].join('\n');
  var fetcher = GraphiQL.createFetcher({
    url: window.location.origin + window.location.pathname,
    headers: headers,
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
    }),
  );
})();
