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

from tests.docs_examples import RUNNABLE, Block, all_blocks, documents, stray_markers
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
