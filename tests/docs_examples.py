"""The fenced examples of README.md and docs/*.md, and the comments that tell how to run them.

Every ```graphql block is an operation (or several) posted to the gateway; every ```sh / ```bash / ```shell
block is a bash script; a ```console block runs its `$ ` lines. The HTML comment that ends on the line right
above a fence says how (docs/development.md, "Examples that run"):

    <!-- example: not run (why) -->                 skipped; the reason is required
    <!-- example: as anonymous -->                   the caller: owner (the default), anonymous, or
    <!-- example: as key createApiKey.secret -->     an API key whose secret an earlier answer holds
    <!-- example: fill "…" with createApiKey.apiKey.id -->   a placeholder, filled from an earlier answer
    <!-- example: fill "https://idp" with $OIDC_ISSUER -->   or from a value the runner provides
    <!-- example: expect FORBIDDEN -->               the operation is meant to fail with this code
    <!-- example: variables {"n": 3} -->             the operation's variables (JSON)
    <!-- example: variables below -->                the variables are the ```json block that follows

Directives combine, separated by `;`. A page whose examples need the team's services behind the gateway says
so once, anywhere: `<!-- examples: upstreams examples/orders/upstreams.toml; service examples.orders -->`.
Nothing here starts a process: tests/docs_runner.py does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRAPHQL = frozenset({"graphql"})
SHELL = frozenset({"sh", "bash", "shell", "console"})
RUNNABLE = GRAPHQL | SHELL

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"<!--\s*example\b(?P<body>.*?)-->", re.DOTALL)
_MARKER_START = re.compile(r"<!--\s*example\b")
_NOT_RUN = re.compile(r"^not run\s*(?:\((?P<reason>.*)\))?\s*$", re.DOTALL)
_FILL = re.compile(r'^fill\s+"(?P<placeholder>[^"]+)"\s+with\s+(?P<source>\S+)$')


class MarkerError(ValueError):
    """An `<!-- example ... -->` comment that does not say anything the runner understands."""


@dataclass(frozen=True)
class Fill:
    placeholder: str  # as written in the example, between the quotes
    source: str  # a path into earlier answers (`createApiKey.apiKey.id`) or `$NAME` (a value of the runner)


@dataclass(frozen=True)
class Marker:
    not_run: str | None = None  # the reason ("" when a `not run` gives none: an error)
    caller: str = "owner"  # owner, anonymous, or `key <path>`
    fills: tuple[Fill, ...] = ()
    expect: frozenset[str] = frozenset()
    variables: dict[str, Any] = field(default_factory=dict)
    variables_below: bool = False


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # the opening fence's line, 1-based
    lang: str
    text: str  # the block's content, indentation removed
    marker: Marker
    marker_error: str | None = None
    json_below: str | None = None  # the ```json block that follows within a few lines, if any

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def _split_directives(body: str) -> list[str]:
    """`;`-separated directives; a `;` inside quotes or brackets does not split."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(body):
        if ch == '"' and (i == 0 or body[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch in "{[(":
            depth += 1
        elif not quoted and ch in "}])":
            depth -= 1
        elif ch == ";" and not quoted and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_marker(comment_body: str) -> Marker:
    body = comment_body.strip()
    if not body.startswith(":"):
        raise MarkerError("write `<!-- example: ... -->` (a colon after `example`)")
    body = body[1:].strip()
    not_run = _NOT_RUN.match(body)
    if not_run:
        return Marker(not_run=(not_run.group("reason") or "").strip())
    caller, fills, expect, variables, below = "owner", [], set(), {}, False
    for directive in _split_directives(body):
        word, _, rest = directive.partition(" ")
        rest = rest.strip()
        if word == "as" and (rest in ("owner", "anonymous") or re.fullmatch(r"key \S+", rest)):
            caller = rest
        elif word == "fill" and (m := _FILL.match(directive)):
            fills.append(Fill(m.group("placeholder"), m.group("source")))
        elif word == "expect" and rest:
            expect |= {c.strip() for c in rest.split(",") if c.strip()}
        elif directive == "variables below":
            below = True
        elif word == "variables":
            try:
                value = json.loads(rest)
            except json.JSONDecodeError as exc:
                raise MarkerError(f"variables are not JSON: {exc}") from exc
            if not isinstance(value, dict):
                raise MarkerError("variables must be a JSON object")
            variables = value
        else:
            raise MarkerError(
                f"unknown directive {directive!r}: expected `not run (reason)`, `as owner|anonymous|key PATH`, "
                '`fill "PLACEHOLDER" with PATH|$NAME`, `expect CODE` or `variables {...}`'
            )
    return Marker(
        caller=caller, fills=tuple(fills), expect=frozenset(expect), variables=variables, variables_below=below
    )


def _marker_above(lines: list[str], fence_index: int) -> tuple[str | None, int]:
    """The body of the `<!-- example ... -->` comment ending on the line right above the fence, if any."""
    end = fence_index - 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return None, end
    start = end
    while start >= 0 and "<!--" not in lines[start]:
        start -= 1
    if start < 0:
        return None, end
    found = _MARKER.search("\n".join(lines[start : end + 1]))
    return (found.group("body") if found else None), start


def _dedent(line: str, indent: int) -> str:
    """A line of a fenced block without the fence's own indentation (a block inside a list item)."""
    return line[indent:] if line[:indent].strip() == "" else line.lstrip()


def _json_below(lines: list[str], start: int, within: int = 4) -> str | None:
    for i in range(start, min(start + within, len(lines))):
        opening = _FENCE.match(lines[i])
        if opening and opening.group("lang").lower() == "json":
            end = i + 1
            while end < len(lines) and not _FENCE.match(lines[end]):
                end += 1
            return "\n".join(lines[i + 1 : end])
    return None


def extract(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of a runnable language in one Markdown file, in order."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent, lang = opening.group("fence"), len(opening.group("indent")), opening.group("lang").lower()
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if closing and not closing.group("lang") and closing.group("fence").startswith(fence):
                break
            j += 1
        if lang in RUNNABLE:
            body = "\n".join(_dedent(line, indent) for line in lines[i + 1 : j])
            comment, _ = _marker_above(lines, i)
            marker, error = Marker(), None
            if comment is not None:
                try:
                    marker = parse_marker(comment)
                except MarkerError as exc:
                    error = str(exc)
            blocks.append(Block(rel, i + 1, lang, body, marker, error, _json_below(lines, j + 1)))
        i = j + 1
    return blocks


def stray_markers(path: Path, root: Path = ROOT) -> list[str]:
    """`<!-- example ... -->` comments that are not right above a runnable fence: they would be ignored."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    attached: set[int] = set()
    for i, line in enumerate(lines):
        opening = _FENCE.match(line)
        if opening and opening.group("lang").lower() in RUNNABLE:
            comment, start = _marker_above(lines, i)
            if comment is not None:
                attached.add(start)
    stray, fence = [], ""
    for i, line in enumerate(lines):
        opening = _FENCE.match(line)
        if opening and not fence:
            fence = opening.group("fence")
        elif opening and fence and not opening.group("lang") and opening.group("fence").startswith(fence):
            fence = ""
        elif not fence and _MARKER_START.search(line) and i not in attached:
            stray.append(f"{rel}:{i + 1}")
    return stray


_SETUP = re.compile(r"<!--\s*examples:(?P<body>.*?)-->", re.DOTALL)


@dataclass(frozen=True)
class Setup:
    """What a page's gateway needs besides the demo tenant."""

    upstreams: str | None = None  # an upstreams file, relative to the repository
    services: tuple[str, ...] = ()  # modules run with `python -m` before the gateway starts


def file_setup(path: Path) -> Setup:
    found = _SETUP.search(path.read_text(encoding="utf-8"))
    if not found:
        return Setup()
    upstreams, services = None, []
    for directive in _split_directives(found.group("body")):
        word, _, rest = directive.partition(" ")
        if word == "upstreams" and rest.strip():
            upstreams = rest.strip()
        elif word == "service" and rest.strip():
            services.append(rest.strip())
        else:
            raise MarkerError(f"{path.name}: unknown setup {directive!r}: `upstreams FILE` or `service MODULE`")
    return Setup(upstreams, tuple(services))


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def all_blocks() -> list[Block]:
    return [block for doc in documents() for block in extract(doc)]


def console_commands(text: str) -> str:
    """The commands of a console transcript: its `$ ` lines (and their `\\` continuations), not its output."""
    commands: list[str] = []
    continuing = False
    for line in text.split("\n"):
        if continuing:
            commands.append(line)
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            continue
        continuing = line.rstrip().endswith("\\")
    return "\n".join(commands)
