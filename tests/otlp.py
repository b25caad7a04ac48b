"""A real OTLP/HTTP trace receiver for the tests: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`,
decoded with the `opentelemetry-proto` package, on a free port of 127.0.0.1 in a thread of the test process. It
reads bodies with a length and chunked ones (OpenTelemetry's JS exporter streams its exports)."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status: int


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "int_value", "bool_value", "double_value") else str(value)


@dataclass
class Receiver:
    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            service = next((_value(a.value) for a in resource_spans.resource.attributes if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            service=str(service),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            status=s.status.code,
                        )
                    )
        with self.lock:
            self.posts += 1
            self.spans.extend(found)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans not received in time; got {[(s.service, s.name) for s in self.spans]}")


def read_chunked(stream: Any) -> bytes:
    """A `Transfer-Encoding: chunked` body from `stream`, to its last chunk and the trailers after it."""
    body = bytearray()
    while size := int(stream.readline().split(b";")[0], 16):
        body += stream.read(size)
        stream.readline()
    while stream.readline() not in (b"\r\n", b"\n", b""):
        pass
    return bytes(body)


@contextlib.contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":  # OpenTelemetry's JS exporter
                body = read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            receiver.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def waterfall_svg(spans: list[ReceivedSpan], title: str) -> str:
    """One trace as a waterfall picture (SVG): a row per span, children under their parent, each bar placed
    and sized by the span's start and duration, labelled with its service, name and milliseconds."""
    by_parent: dict[str, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in spans}
    for s in sorted(spans, key=lambda s: s.start_ns):
        by_parent.setdefault(s.parent_id if s.parent_id in ids else "", []).append(s)
    rows: list[tuple[int, ReceivedSpan]] = []

    def walk(parent: str, depth: int) -> None:
        for child in by_parent.get(parent, []):
            rows.append((depth, child))
            walk(child.span_id, depth + 1)

    walk("", 0)
    start = min(s.start_ns for s in spans)
    total = max(s.end_ns for s in spans) - start or 1
    label_width, bar_width, row_height = 300, 520, 26
    height = 50 + row_height * len(rows)
    colours = {"portcullis": "#3b6ea8", "billing": "#4f9a5a", "orders": "#b5773a"}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + bar_width + 90}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (depth, s) in enumerate(rows):
        y = 40 + i * row_height
        x = label_width + (s.start_ns - start) / total * bar_width
        width = max(2.0, (s.end_ns - s.start_ns) / total * bar_width)
        colour = colours.get(s.service, "#777777")
        milliseconds = (s.end_ns - s.start_ns) / 1e6
        out.append(f'<text x="{10 + depth * 16}" y="{y + 15}">{escape(s.service)}: {escape(s.name)}</text>')
        out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="16" rx="2" fill="{colour}"/>')
        out.append(
            f'<text x="{label_width + bar_width + 80}" y="{y + 15}" fill="#333" text-anchor="end">'
            f"{milliseconds:.2f} ms</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def draw(path: str, spans: list[ReceivedSpan], title: str) -> None:
    Path(path).write_text(waterfall_svg(spans, title))
