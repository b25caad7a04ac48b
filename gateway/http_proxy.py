"""The HTTP upstreams' routes at the edge: a request under a prefix of the upstreams file, already
authenticated by the edge (gateway/middleware.py), is matched, admitted, authorized and forwarded.

In order: the route is matched on the path as sent (`gateway.http_routes`; no route: 404, a method not
listed: 405 with `Allow`); the request and the route's cost are taken from the tenant's budgets in one
admission take, as a GraphQL operation's are (429/503); the route's rule is decided by `authz.decide`
(401/403, the contract's JSON error body); `X-Portcullis-Explain: 1` answers what would happen instead of
forwarding; a declared body over the route's limit is 413 before anything is sent. Then the request goes to
the upstream with the context token, `X-Request-ID` and a rebuilt `X-Forwarded-For`, without the client's
credentials, cookies or hop-by-hop headers; the body streams up and the answer streams back (neither is held
in memory), minus hop-by-hop headers and `Set-Cookie` unless the route allows it. An upstream that closes
mid-answer cuts the client's answer short (its connection is closed, never completed or reused). Audited
routes write one entry when the answer ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from opentelemetry.trace import SpanKind
from starlette.types import Receive, Scope, Send
from yarl import URL

from authz import ALLOW, Decision, Principal, anonymous, decide
from authz.errors import ErrorCode
from gateway.admission import EdgeAdmission
from gateway.http_messages import (
    CHUNK,
    HOP_BY_HOP,
    NOT_FORWARDED,
    PREFETCH_BYTES,
    BodyTooLarge,
    RequestBody,
    returned,
    single,
    too_large,
    unavailable,
)
from gateway.http_routes import HttpUpstreamConfig, Matched, NotAllowed, RouteTable
from gateway.middleware import graphql_error, request_state, send_json
from identity.context_tokens import ContextTokens
from resolvers.upstream_client import CircuitBreaker
from schema.limits.admission import EXPLAIN_HEADER
from store.audit import ActorType, AuditAction, AuditEvent, AuditTrail
from store.telemetry import propagation_headers, span

log = logging.getLogger("portcullis.upstreams")

_MFA_REFUSAL = "this session may only enroll a second factor or change its password"


class HttpUpstreams:
    """The ASGI application of every HTTP upstream's prefix."""

    def __init__(
        self,
        table: RouteTable,
        *,
        admission: EdgeAdmission,
        tokens: ContextTokens,
        audit: AuditTrail,
        failure_threshold: int = 5,
        open_seconds: float = 10.0,
    ) -> None:
        self.table = table
        self.admission = admission
        self.tokens = tokens
        self.audit = audit
        self.breakers = {u.name: CircuitBreaker(failure_threshold, open_seconds) for u in table.upstreams}
        self.permissions = {u.name: u.permissions for u in table.upstreams}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self.requests = dict.fromkeys(self.breakers, 0)
        self.failures = dict.fromkeys(self.breakers, 0)
        self.in_flight = dict.fromkeys(self.breakers, 0)
        # told of every call: (upstream, outcome, seconds), as the GraphQL upstreams' clients are (/metrics)
        self.observe: Callable[[str, str, float], None] | None = None

    def status(self) -> dict[str, dict[str, Any]]:
        """Each HTTP upstream's circuit and counts, as `/readyz` and `/metrics` show them."""
        return {
            name: {
                "circuit": breaker.state,
                "requests": self.requests[name],
                "failures": self.failures[name],
                "circuitOpened": breaker.times_opened,
            }
            for name, breaker in self.breakers.items()
        }

    def _session(self, upstream: HttpUpstreamConfig) -> aiohttp.ClientSession:
        session = self._sessions.get(upstream.name)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=upstream.max_connections, ttl_dns_cache=300),
                # the deadline is for each wait on the upstream (its answer's head, then every read), not for
                # the whole transfer: a large download takes as long as it takes while data keeps coming
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=upstream.timeout_seconds, sock_read=upstream.timeout_seconds
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # bytes pass through as the upstream encoded them
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
            self._sessions[upstream.name] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)
        principal: Principal = state.get("principal") or anonymous(state.get("client_ip"), state.get("request_id"))
        method: str = scope["method"]
        raw_path: bytes = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        found = self.table.match(raw_path, method)
        if not isinstance(found, Matched):
            # a path or method the team did not declare is counted like any request, at no cost
            if await self._admitted(principal, state, send, cost=0, spend_cost=False) is None:
                return
            if isinstance(found, NotAllowed):
                allow = ", ".join(found.allow).encode()
                message = f"The method {method} is not allowed here; allowed: {allow.decode()}."
                await send_json(
                    send, 405, graphql_error(message, ErrorCode.BAD_USER_INPUT.value), headers=[(b"allow", allow)]
                )
            else:
                await send_json(send, 404, graphql_error("Not found.", ErrorCode.NOT_FOUND.value))
            return
        route = found.route
        public = f"{found.upstream.prefix}{route.path}"
        state["metric_route"] = f"{method} {public}"
        edge_span = state.get("span")
        if edge_span is not None:
            edge_span.update_name(f"{method} {public}")
            edge_span.set_attribute("http.route", public)
        with span("authorize"):
            decision = self._decide(principal, found)
        explain = single(scope, EXPLAIN_HEADER.encode()) == b"1"
        admitted = await self._admitted(
            principal, state, send, cost=route.cost, spend_cost=bool(decision) and not explain
        )
        if admitted is None:
            return
        if explain:
            await send_json(send, 200, {"explain": self._explanation(found, method, decision, admitted)})
            return
        if not decision:
            await self._refuse(send, principal, decision)
            return
        declared = single(scope, b"content-length")
        if declared is not None and not declared.isdigit():
            await send_json(send, 400, graphql_error("Invalid Content-Length.", ErrorCode.BAD_USER_INPUT.value))
            return
        if declared is not None and int(declared) > route.max_body_bytes:
            await too_large(send, route.max_body_bytes)
            return
        name = found.upstream.name
        with span(f"upstream {name}", kind=SpanKind.CLIENT, attributes={"portcullis.upstream": name}) as call:
            await self._forward(scope, receive, send, found, principal, call)

    def _decide(self, principal: Principal, found: Matched) -> Decision:
        rule = found.route.rule
        if rule.public:
            return ALLOW
        if principal.mfa_enrollment_required or principal.password_change_required:
            return Decision(allowed=False, reason=_MFA_REFUSAL)
        return decide(principal, rule.requirement)

    async def _admitted(
        self, principal: Principal, state: dict[str, Any], send: Send, *, cost: int, spend_cost: bool
    ) -> Any:
        decision = await self.admission.admit(
            principal, key_rate_limit=state.get("api_key_rate_limit"), cost=cost, spend_cost=spend_cost
        )
        state["admission"] = decision  # its RateLimit headers join the answer (gateway/tracing.py)
        if decision.admitted:
            return decision
        if decision.status == 429:
            retry = decision.retry_after
            body = graphql_error(f"Rate limit exceeded; retry in {retry} s.", "RATE_LIMITED", retryAfter=retry)
        else:
            body = graphql_error(
                "The rate limiter is unavailable; retry shortly.", "INTERNAL", retryAfter=decision.retry_after
            )
        await send_json(send, decision.status, body, headers=decision.headers())
        return None

    @staticmethod
    async def _refuse(send: Send, principal: Principal, decision: Decision) -> None:
        if not principal.is_authenticated:
            await send_json(
                send,
                401,
                graphql_error("Authentication required.", ErrorCode.UNAUTHENTICATED.value),
                headers=[(b"www-authenticate", b'Bearer realm="portcullis"')],
            )
            return
        extensions: dict[str, Any] = {}
        if decision.required_scopes:
            extensions["requiredScopes"] = [list(group) for group in decision.required_scopes]
        if decision.required_plan:
            extensions["requiredPlan"] = decision.required_plan
        message = "Not allowed: " + (decision.reason or "forbidden") + "."
        await send_json(send, 403, graphql_error(message, ErrorCode.FORBIDDEN.value, **extensions))

    def _explanation(self, found: Matched, method: str, decision: Decision, admitted: Any) -> dict[str, Any]:
        route = found.route
        out: dict[str, Any] = {
            "upstream": found.upstream.name,
            "route": route.path,
            "method": method,
            "rule": route.rule.describe(),
            "allowed": bool(decision),
            "cost": route.cost,
            "audited": method in route.audit,
            "maxBodyBytes": route.max_body_bytes,
            "rateLimits": [
                {"name": s.limit.name, "limit": s.limit.amount, "window": s.limit.window, "remaining": s.remaining}
                for s in admitted.states
            ],
        }
        if not decision:
            out["denied"] = {
                "reason": decision.reason,
                "requiredScopes": [list(g) for g in decision.required_scopes] or None,
                "requiredPlan": decision.required_plan,
            }
        return out

    def _headers(self, scope: Scope, found: Matched, principal: Principal) -> dict[str, str]:
        connection_named = {
            token.strip().lower().encode()
            for name, value in scope["headers"]
            if name == b"connection"
            for token in value.decode("latin-1").split(",")
        }
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in HOP_BY_HOP or name in NOT_FORWARDED or name in connection_named:
                continue
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        upstream = found.upstream
        token = self.tokens.token_for(principal, upstream.name, self.permissions[upstream.name])
        headers["authorization"] = f"Bearer {token}"
        if principal.request_id:
            headers["x-request-id"] = principal.request_id
        if principal.client_ip:
            headers["x-forwarded-for"] = principal.client_ip  # the trusted client address, never copied
        headers["x-forwarded-proto"] = scope.get("scheme", "http")
        headers["x-forwarded-prefix"] = upstream.prefix
        declared = single(scope, b"content-length")
        if declared is not None:
            headers["content-length"] = declared.decode("latin-1")
        headers.update(propagation_headers())
        return headers

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, found: Matched, principal: Principal, call: Any
    ) -> None:
        upstream, route = found.upstream, found.route
        method: str = scope["method"]
        breaker = self.breakers[upstream.name]
        started = time.perf_counter()
        status = 0
        outcome = "ok"
        response_started = False
        declared = single(scope, b"content-length")
        has_body = declared not in (None, b"0") or single(scope, b"transfer-encoding") is not None
        body = RequestBody(receive, route.max_body_bytes)

        self.in_flight[upstream.name] += 1
        try:
            if not breaker.allow():
                outcome = "circuit_open"
                status = 503
                await unavailable(send, upstream.name, principal, 503)
                return
            data: bytes | AsyncIterator[bytes] | None = None
            if has_body and declared is None:
                # a body of unknown length: what fits in PREFETCH_BYTES is read first, so that one over the
                # route's limit is refused before anything is sent, and a short one goes with its length
                await body.prefetch(PREFETCH_BYTES)
                data = body.head_bytes() if body.ended else body.rest()
            elif has_body:
                data = body.rest()
            self.requests[upstream.name] += 1
            query = scope.get("query_string") or b""
            target = upstream.url + found.forward_path + ("?" + query.decode("latin-1") if query else "")
            url = URL(target, encoded=True)
            async with self._session(upstream).request(
                method,
                url,
                headers=self._headers(scope, found, principal),
                data=data,
                allow_redirects=False,
            ) as response:
                status = response.status
                if status >= 500:
                    outcome = "error"
                    self.failures[upstream.name] += 1
                    breaker.failed()
                else:
                    breaker.succeeded()
                headers = returned(response.raw_headers, route.allow_set_cookie)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                response_started = True
                if method != "HEAD" and not await _stream(response, receive, send, has_body, body):
                    outcome, status = "client_gone", 499
                    return
                await send({"type": "http.response.body", "body": b""})
        except BodyTooLarge:
            outcome, status = "body_too_large", 413
            if not response_started:
                await too_large(send, route.max_body_bytes)
        except (aiohttp.ClientError, TimeoutError, ConnectionResetError, OSError) as exc:
            if body.too_large:
                outcome, status = "body_too_large", 413
                if not response_started:
                    await too_large(send, route.max_body_bytes)
                return
            if body.client_gone:
                outcome, status = "client_gone", 499
                return
            if response_started:
                outcome = "truncated"
                log.warning("upstream %s closed its answer early: %s", upstream.name, type(exc).__name__)
                raise ConnectionAbortedError(f"the upstream {upstream.name} closed its answer early") from None
            timed_out = isinstance(exc, TimeoutError)
            outcome = "timeout" if timed_out else "unavailable"
            status = 504 if timed_out else 502
            self.failures[upstream.name] += 1
            breaker.failed()
            log.warning("upstream %s %s: %s", upstream.name, outcome, type(exc).__name__)
            await unavailable(send, upstream.name, principal, status)
        finally:
            self.in_flight[upstream.name] -= 1
            if self.observe is not None:
                self.observe(upstream.name, outcome, time.perf_counter() - started)
            if call is not None:
                call.set_attribute("http.response.status_code", status)
                call.set_attribute("portcullis.outcome", outcome)
            if method in route.audit:
                await self._audit(found, method, principal, scope, status, outcome, time.perf_counter() - started)

    async def _audit(
        self, found: Matched, method: str, principal: Principal, scope: Scope, status: int, outcome: str, seconds: float
    ) -> None:
        agent = single(scope, b"user-agent")
        event = AuditEvent(
            action=AuditAction.UPSTREAM_REQUEST,
            result="success" if outcome == "ok" and status < 400 else "error",
            organization_id=principal.organization_id,
            actor_type=ActorType(principal.kind.value) if principal.is_authenticated else ActorType.ANONYMOUS,
            actor_id=principal.subject_id,
            resource_type="upstream",
            resource_id=found.upstream.name,
            request_id=principal.request_id,
            ip=principal.client_ip,
            user_agent=agent.decode("latin-1")[:512] if agent else None,
            details={
                "upstream": found.upstream.name,
                "route": found.route.path,
                "method": method,
                "status": status,
                "outcome": outcome,
                "latencyMs": round(seconds * 1000, 1),
            },
        )
        try:
            await self.audit.record(event)
        except Exception:
            log.exception("audit entry of an upstream request not written", extra={"request_id": principal.request_id})


async def _stream(
    response: aiohttp.ClientResponse, receive: Receive, send: Send, has_body: bool, body: RequestBody
) -> bool:
    """Passes the answer's body on, chunk by chunk; false when the client went away first. An answer of more
    than one chunk is watched for the client's disconnection (once the request's own body is read), so that a
    download nobody waits for any more stops being read from the upstream."""
    watcher: asyncio.Future[Any] | None = None
    first = True
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            if watcher is not None and watcher.done():
                return False
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if first:
                first = False
            elif watcher is None and (not has_body or body.ended):
                watcher = asyncio.ensure_future(_disconnection(receive))
        return True
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()


async def _disconnection(receive: Receive) -> None:
    """Returns when the client hangs up (a request without a body still has its one, empty, message first)."""
    while (await receive())["type"] != "http.disconnect":
        pass
