"""GraphQL over HTTP: which media type a response is written in, and what status a request error gets in it.

The GraphQL-over-HTTP specification defines two response media types. `application/graphql-response+json`
says what the status means: a document that does not parse or validate, or variables that do not coerce,
is a 4xx (the gateway answers 400). `application/json` is the older one: a client that asks for it by name
gets 200 for those request errors, the errors in the body, because intermediaries cannot tell a GraphQL
error from a failure of their own. A client that names neither (no `Accept`, or only wildcards such as
`*/*`) gets `application/json` with the contract's 400 for those errors, as before the negotiation
existed. The gateway's own statuses are kept in every case: 401, 403, 413, 429, an operation over the
limits (400), text that cannot be stored (400), an unexpected failure (500).

An `Accept` that admits neither type is refused with 406 before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
_SPECIFIC = 2  # the media range names the type exactly; 1 for `application/*`, 0 for `*/*`


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The media type of the response (None: nothing the client accepts), and whether request errors
    (parse, validation, variables) are answered 200, as `application/json` asked for by name wants."""

    media_type: str | None
    request_errors_ok: bool = False

    @property
    def content_type(self) -> bytes:
        return (self.media_type or JSON).encode()


LEGACY = Negotiated(JSON)
_cache: dict[bytes, Negotiated] = {}
_CACHE_SIZE = 256


def negotiate(accept: bytes | None) -> Negotiated:
    """The response's media type for an `Accept` header (RFC 9110, section 12.5.1): the acceptable type
    with the highest quality; at equal quality the one named more specifically; `application/json` for
    wildcards, `application/graphql-response+json` when both are named alike."""
    if not accept or not accept.strip():
        return LEGACY
    found = _cache.get(accept)
    if found is None:
        found = _negotiate(accept.decode("latin-1"))
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[accept] = found
    return found


def _negotiate(accept: str) -> Negotiated:
    best: dict[str, tuple[int, float]] = {}  # media type -> (specificity of its best match, quality)
    for media_range in accept.split(","):
        kind, _, params = media_range.partition(";")
        kind = kind.strip().lower()
        if "/" not in kind:
            continue
        quality = _quality(params)
        for candidate in (GRAPHQL_RESPONSE_JSON, JSON):
            specificity = _matches(kind, candidate)
            if specificity is None:
                continue
            # the most specific range that matches a type decides its quality (RFC 9110, 12.5.1)
            if candidate not in best or specificity > best[candidate][0]:
                best[candidate] = (specificity, quality)
    acceptable = {t: v for t, v in best.items() if v[1] > 0}
    if not acceptable:
        return Negotiated(None)

    def rank(media_type: str) -> tuple[float, int, int]:
        specificity, quality = acceptable[media_type]
        named_first = int(media_type == GRAPHQL_RESPONSE_JSON) if specificity == _SPECIFIC else int(media_type == JSON)
        return quality, specificity, named_first

    chosen = max(acceptable, key=rank)
    named = acceptable[chosen][0] == _SPECIFIC
    return Negotiated(chosen, request_errors_ok=chosen == JSON and named)


def _matches(media_range: str, media_type: str) -> int | None:
    if media_range == media_type:
        return _SPECIFIC
    if media_range == "application/*":
        return 1
    if media_range == "*/*":
        return 0
    return None


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
        # the charset and other parameters of the range do not change what is chosen
    return 1.0
