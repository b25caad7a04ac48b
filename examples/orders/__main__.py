"""`python -m examples.orders`: the example orders service on ORDERS_HOST:ORDERS_PORT (127.0.0.1:9100),
trusting the context tokens of the gateway at ORDERS_ISSUER, whose keys it reads from ORDERS_JWKS_URL; its
spans continue the gateway's traces and go to OTEL_EXPORTER_OTLP_ENDPOINT when that is set."""

from __future__ import annotations

import os

import uvicorn

from examples.orders.app import create_app
from examples.tracing import traced_from_environment


def main() -> None:
    app = create_app(
        jwks_url=os.environ.get("ORDERS_JWKS_URL", "http://127.0.0.1:8000/.well-known/jwks.json"),
        issuer=os.environ.get("ORDERS_ISSUER", "http://127.0.0.1:8000"),
    )
    uvicorn.run(
        traced_from_environment(app, "orders"),
        host=os.environ.get("ORDERS_HOST", "127.0.0.1"),
        port=int(os.environ.get("ORDERS_PORT", "9100")),
    )


if __name__ == "__main__":
    main()
