"""The token limit: lexical tokens in the query text, counted before it is parsed.

The lexer stops one token past the highest maximum of any plan, so a 50,000-token document (C-007)
costs the lexing of at most that many tokens and is never parsed, validated or cached. Counts of
short texts are kept, so a document seen before costs a dictionary lookup. A text the lexer cannot
read is left to the parser, which reports the syntax error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

from graphql import GraphQLError
from graphql.language import Lexer, Source, TokenKind
from strawberry.extensions import SchemaExtension

from authz.errors import OperationTooComplex
from schema.enums import Plan
from schema.limits.plans import OPERATION_LIMITS, OperationLimits, limits_for

CACHE_SIZE = 1024
CACHED_TEXT_MAX = 16 * 1024  # longer texts are counted again each time (still at most `ceiling` tokens)
_counts: OrderedDict[str, int] = OrderedDict()


def count_tokens(query: str, stop_after: int) -> int:
    """Tokens in `query` (comments excluded), counting no further than `stop_after`."""
    lexer = Lexer(Source(query))
    count = 0
    while count < stop_after and lexer.advance().kind is not TokenKind.EOF:
        count += 1
    return count


def tokens_of(query: str, ceiling: int) -> int | None:
    cached = _counts.get(query)
    if cached is not None:
        _counts.move_to_end(query)
        return cached
    try:
        measured = count_tokens(query, ceiling)
    except GraphQLError:
        return None
    if len(query) <= CACHED_TEXT_MAX:
        _counts[query] = measured
        if len(_counts) > CACHE_SIZE:
            _counts.popitem(last=False)
    return measured


class TokenLimit(SchemaExtension):
    """Installed before the parser cache, it decides in `on_parse`, before the text is parsed."""

    name = "tokens"

    def __init__(self, *, table: Mapping[Plan, OperationLimits] = OPERATION_LIMITS) -> None:
        super().__init__()
        self.table = table
        self.ceiling = max(row.tokens for row in table.values()) + 1

    def on_parse(self) -> Iterator[None]:
        ec = self.execution_context
        if ec.query and ec.graphql_document is None:
            measured = tokens_of(ec.query, self.ceiling)
            maximum = limits_for(ec.context.principal, self.table).tokens
            if measured is not None and measured > maximum:
                response = getattr(ec.context, "response", None)
                if response is not None:
                    response.status_code = 400
                # raised rather than recorded: the text must never reach the parser
                raise OperationTooComplex(self.name, maximum, measured)
        yield
