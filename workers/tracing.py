"""OpenTelemetry, when the `otel` extra is installed (`pip install 'mongo-workers[otel]'`).

A push stores the pushing code's trace context with the job (W3C `traceparent`, and
`tracestate` when there is one), and each attempt of a class-based job runs in a span
linked to it, with the job's id, type and attempt as attributes. The span ends with the
attempt's outcome; a failure is recorded on it as an exception and an error status. The
spans go wherever the app's TracerProvider sends them (none configured: nowhere).

Without opentelemetry installed, nothing is imported (one `find_spec` at import) and each
hook is a constant no-op.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

TRACER = "workers"


def _installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry") is not None
    except (ImportError, ValueError):  # hidden by an import hook, or a None in sys.modules
        return False


ENABLED = _installed()


class Span:
    """The attempt's span (or nothing, without opentelemetry): `end` says how it went."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def end(self, error: BaseException | None) -> None:
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("workers.job.outcome", "failed" if error else "completed")
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


_NOTHING = Span()


def load() -> None:
    """Import opentelemetry and make the tracer proxy at a worker's start: the first attempt
    would otherwise pay for it (some 30 ms, and 0.4 MB that a memory reading across the
    first jobs took for growth)."""
    if ENABLED:
        from opentelemetry import propagate, trace

        propagate.get_global_textmap()
        trace.get_tracer(TRACER)


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers, to store with a job; None when there is
    no trace (or no opentelemetry)."""
    if not ENABLED:
        return None
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


@contextlib.contextmanager
def attempt(job_type: str, job_id: str, number: int, stored: Any) -> Iterator[Span]:
    """Run an attempt in a span linked to the push's context (`stored`, the job's `trace`)."""
    if not ENABLED:
        yield _NOTHING
        return
    from opentelemetry import propagate, trace

    links = []
    if isinstance(stored, dict) and all(isinstance(v, str) for v in stored.values()):
        pushed = trace.get_current_span(propagate.extract(stored)).get_span_context()
        if pushed.is_valid:
            links.append(trace.Link(pushed))
    attributes: dict[str, str | int] = {
        "workers.job.id": job_id, "workers.job.type": job_type, "workers.job.attempt": number
    }  # fmt: skip
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span(
        f"{job_type} attempt",
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
        record_exception=False,  # a job's errors never escape; Span.end records them
        set_status_on_exception=False,
    ) as span:
        yield Span(span)
