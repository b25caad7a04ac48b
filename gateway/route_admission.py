"""The edge's admission of every tenant route other than `/graphql`, after authentication (GraphQL is
admitted by the schema's `AdmissionExtension`, once the operation's cost is known; see gateway/admission.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from authz import anonymous
from gateway.admission import EdgeAdmission
from gateway.middleware import AuthenticationMiddleware, graphql_error, request_state, send_json, under_prefix


class AdmissionMiddleware:
    """Admits every tenant route other than `/graphql` at no cost (GraphQL is admitted in the schema,
    once its cost is known; see gateway/admission.py). Public routes pass through unlimited. The HTTP upstreams'
    prefixes (`exempt_prefixes`) are admitted by their routes, at each route's cost (gateway/http_proxy.py)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        admission: EdgeAdmission,
        graphql_path: str = "/graphql",
        exempt_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.admission = admission
        self.graphql_path = graphql_path
        self.exempt = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] == self.graphql_path
            or scope["path"] in AuthenticationMiddleware.PUBLIC_PATHS
            or scope["path"].startswith("/.well-known/")
            or (self.exempt and under_prefix(scope["path"], self.exempt))
        ):
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        principal = state.get("principal") or anonymous(state.get("client_ip"), state.get("request_id"))
        decision = await self.admission.admit(principal, key_rate_limit=state.get("api_key_rate_limit"))
        state["admission"] = decision  # its RateLimit headers join the answer (gateway/tracing.py)
        if not decision.admitted:
            if decision.status == 429:
                body = graphql_error(
                    f"Rate limit exceeded; retry in {decision.retry_after} s.",
                    "RATE_LIMITED",
                    retryAfter=decision.retry_after,
                )
            else:
                body = graphql_error(
                    "The rate limiter is unavailable; retry shortly.", "INTERNAL", retryAfter=decision.retry_after
                )
            await send_json(send, decision.status, body, headers=decision.headers())
            return
        await self.app(scope, receive, send)
