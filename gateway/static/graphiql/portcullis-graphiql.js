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
  var fetcher = GraphiQL.createFetcher({
    url: window.location.origin + window.location.pathname,
    headers: headers,
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
    }),
  );
})();
