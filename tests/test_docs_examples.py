"""Every fenced GraphQL and shell example of README.md and docs/*.md runs against a real gateway.

One test per block, named by its file and the line of its opening fence (`docs/sso.md:48`). A block marked
`<!-- example: not run (reason) -->` is skipped with its reason, and a marker without a reason fails. How the
examples run, and how to mark one: docs/development.md, "Examples that run"; tests/docs_runner.py.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.docs_examples import (
    RUNNABLE,
    Block,
    Fill,
    MarkerError,
    all_blocks,
    console_commands,
    documents,
    extract,
    parse_marker,
    stray_markers,
)
from tests.docs_runner import FileRun, file_runs

BLOCKS = all_blocks()


class Values:
    """The `$NAME` sources a `fill` may name: test identity providers, started on first use."""

    def __init__(self, stack: contextlib.ExitStack, directory: Path) -> None:
        self.stack = stack
        self.directory = directory
        self.known: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self.known:
            self.known.update(self._start(name))
        if name not in self.known:
            raise AssertionError(
                f"no value ${name}: known are OIDC_ISSUER, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, SAML_IDP_METADATA"
            )
        return self.known[name]

    def _start(self, name: str) -> dict[str, str]:
        if name.startswith("OIDC_"):
            from tests.idp import node_provider
            from tests.services import ServiceUnavailable

            try:
                issuer = self.stack.enter_context(node_provider.oidc_provider(["http://127.0.0.1/auth/oidc/callback"]))
            except ServiceUnavailable as exc:
                from tests.conftest import unavailable

                unavailable(str(exc))
            return {
                "OIDC_ISSUER": issuer,
                "OIDC_CLIENT_ID": node_provider.CLIENT_ID,
                "OIDC_CLIENT_SECRET": node_provider.CLIENT_SECRET,
            }
        if name == "SAML_IDP_METADATA":
            from tests.saml_idp import TestIdp

            idp = TestIdp()
            self.stack.callback(idp.close)
            return {"SAML_IDP_METADATA": idp.metadata}
        return {}


@pytest.fixture(scope="session")
def run_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Block], FileRun]]:
    root = tmp_path_factory.mktemp("docs-examples")
    with contextlib.ExitStack() as stack:
        values = Values(stack, root)
        with file_runs(root, values) as runs:
            yield runs


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example(block: Block, run_for: Callable[[Block], FileRun]) -> None:
    if block.marker_error is not None:
        pytest.fail(f"{block.id}: {block.marker_error}", pytrace=False)
    if block.marker.not_run is not None:
        if not block.marker.not_run:
            pytest.fail(f"{block.id}: `not run` needs its reason: <!-- example: not run (why) -->", pytrace=False)
        pytest.skip(f"not run: {block.marker.not_run}")
    run = run_for(block)
    outcome = run.run(block)
    if not outcome.ok:
        earlier = run.failed_before(block)
        note = f"\n(earlier blocks of this file failed too: {', '.join(earlier)})" if earlier else ""
        log = run.log_tail()
        pytest.fail(
            f"{block.id} ({block.lang}) failed: {outcome.detail}{note}\n--- gateway log ---\n{log}", pytrace=False
        )


def test_every_marker_sits_right_above_an_example() -> None:
    """A marker anywhere else would silently do nothing."""
    assert [m for doc in documents() for m in stray_markers(doc)] == []


def test_most_examples_run() -> None:
    """The tally of what runs and what is skipped: skipping is the exception, each with its reason."""
    tally = Counter("not run" if b.marker.not_run is not None else "run" for b in BLOCKS)
    by_lang = Counter(b.lang for b in BLOCKS)
    assert set(by_lang) <= RUNNABLE
    assert tally["run"] > 2 * tally["not run"], dict(tally)


def test_markers_are_read_as_documented() -> None:
    m = parse_marker(': as key createApiKey.secret; fill "…" with createApiKey.apiKey.id; expect FORBIDDEN, NOT_FOUND')
    assert m.caller == "key createApiKey.secret"
    assert m.fills == (Fill("…", "createApiKey.apiKey.id"),)
    assert m.expect == {"FORBIDDEN", "NOT_FOUND"}
    assert parse_marker(': variables {"a": {"b": 1}}; as anonymous').variables == {"a": {"b": 1}}
    assert parse_marker(": not run (a server; runs until stopped)").not_run == "a server; runs until stopped"
    assert parse_marker(": not run").not_run == ""
    assert parse_marker(": not run ()").not_run == ""
    with pytest.raises(MarkerError):
        parse_marker(": as somebody")
    with pytest.raises(MarkerError):
        parse_marker(" not run (no colon)")


def test_blocks_markers_and_transcripts_are_extracted(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- example: not run () -->\n```sh\nmake serve\n```\n\n"
        "- a list item:\n\n  ```graphql\n  { me { kind } }\n  ```\n\n"
        '<!-- example: variables below -->\n```graphql\nquery($n: Int) { a(n: $n) }\n```\n\n```json\n{"n": 1}\n```\n'
        "<!-- example: not run (stray) -->\n\nText.\n```python\nprint()\n```\n"
    )
    blocks = extract(page, root=tmp_path)
    assert [(b.line, b.lang) for b in blocks] == [(2, "sh"), (8, "graphql"), (13, "graphql")]
    assert blocks[0].marker.not_run == ""
    assert blocks[1].text == "{ me { kind } }"
    assert blocks[2].json_below == '{"n": 1}'
    assert stray_markers(page, root=tmp_path) == ["page.md:20"]
    assert console_commands("$ portcullis mail list \\\n  --limit 1\nid  2026  text\n$ true") == (
        "portcullis mail list \\\n  --limit 1\ntrue"
    )
