"""`python -m examples.billing`: the example billing service on BILLING_HOST:BILLING_PORT (127.0.0.1:9200),
trusting the context tokens of the gateway at BILLING_ISSUER, whose keys it reads from BILLING_JWKS_URL; its
spans continue the gateway's traces and go to OTEL_EXPORTER_OTLP_ENDPOINT when that is set."""

from __future__ import annotations

import os

import uvicorn

from examples.billing.app import AUDIENCE, create_app
from examples.context_tokens import ContextTokenVerifier
from examples.tracing import traced_from_environment


def main() -> None:
    verifier = ContextTokenVerifier(
        jwks_url=os.environ.get("BILLING_JWKS_URL", "http://127.0.0.1:8000/.well-known/jwks.json"),
        jwks=None,
        issuer=os.environ.get("BILLING_ISSUER", "http://127.0.0.1:8000"),
        audience=AUDIENCE,
    )
    host, port = os.environ.get("BILLING_HOST", "127.0.0.1"), int(os.environ.get("BILLING_PORT", "9200"))
    uvicorn.run(traced_from_environment(create_app(verifier), "billing"), host=host, port=port)


if __name__ == "__main__":
    main()
