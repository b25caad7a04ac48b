"""The Portcullis benchmark: what a small authenticated GraphQL query costs through the gateway.

`python -m bench` prepares one SQLite database with the demo tenant, then starts, one at a time, the
servers of each scenario, each answering its scenario's query from the same row:

- scenario `basic`, `{ organization { id slug name plan } }`:
  - `gateway`: `gateway.app:create_app`, with its edge middleware, Bearer authentication and extensions;
  - `strawberry-default`: a bare Strawberry ASGI app, as Strawberry's documentation shows it;
  - `strawberry-cached`: the same app with Strawberry's `ParserCache` and `ValidationCache`;
  - `graphql-core`: a Starlette endpoint calling `graphql.execute` with a cache of validated documents.
- scenario `guarded`, the same query with `billingEmail`, a field that requires `billing:read`:
  - `gateway`, as above;
  - `gateway-unenforced`: the same gateway built with field authorization switched off.
- scenario `forward`, `{ orders(first: 10) { id total status customer } }`, forwarded to a Node upstream that
  answers fixed JSON (`bench/forward.py`):
  - `gateway-forward` and `gateway-forward-redis`: the gateway with the upstreams file, embedded and shared mode;
  - `python-forward`: the Python floor, a Starlette endpoint passing the validated query through with the
    gateway's HTTP client, no edge (`bench/apps/python_forward.py`);
  - `upstream-direct`: the upstream itself; `hive-gateway`: GraphQL Hive Gateway proxying it.
- scenario `forward-http`, `GET /api/billing/invoices/1`, forwarded to an HTTP upstream's route, a Node server
  answering one fixed invoice (`bench/forward_http.py`):
  - `gateway-forward-http` and `gateway-forward-http-redis`: the gateway with the route, embedded and shared mode;
  - `billing-direct`: the upstream itself, sent `GET /invoices/1`;
  - `gateway-forward` and `hive-gateway`, sent the `forward` scenario's query, measured beside them.

Each server runs as its own uvicorn process (one worker, uvloop, httptools) and is loaded by `wrk` at one
and at 32 connections; the result is throughput, median and 99th-percentile latency per server, the
gateway's ratios to each baseline, and what field authorization adds to the gateway's latency.
"""
