"""`python -m examples.billing`: the example billing service on BILLING_HOST:BILLING_PORT (127.0.0.1:9200),
trusting the context tokens of the gateway at BILLING_ISSUER, whose keys it reads from BILLING_JWKS_URL."""

from __future__ import annotations

import os

import uvicorn

from examples.billing.app import AUDIENCE, create_app
from examples.context_tokens import ContextTokenVerifier


def main() -> None:
    verifier = ContextTokenVerifier(
        jwks_url=os.environ.get("BILLING_JWKS_URL", "http://127.0.0.1:8000/.well-known/jwks.json"),
        jwks=None,
        issuer=os.environ.get("BILLING_ISSUER", "http://127.0.0.1:8000"),
        audience=AUDIENCE,
    )
    host, port = os.environ.get("BILLING_HOST", "127.0.0.1"), int(os.environ.get("BILLING_PORT", "9200"))
    uvicorn.run(create_app(verifier), host=host, port=port)


if __name__ == "__main__":
    main()
