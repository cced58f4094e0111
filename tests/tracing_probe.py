"""Run by tests/test_tracing.py in a process of its own (a TracerProvider is set once per
process): push two jobs inside a span, run them on a worker thread, print what was traced.

Usage: python -m tests.tracing_probe MONGO_URL DATABASE [--without-otel]
"""

from __future__ import annotations

import importlib.abc
import json
import sys
import threading
import time
from typing import Any


class _NoOpenTelemetry(importlib.abc.MetaPathFinder):
    """As if the otel extra were not installed."""

    def find_spec(self, name: str, *args: Any) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")


def main(url: str, database: str, without: bool) -> dict[str, Any]:
    if without:
        sys.meta_path.insert(0, _NoOpenTelemetry())
    import workers
    from tests.conftest import settings_dict
    from workers.settings import validate
    from workers.worker import Worker

    exporter = _exporter() if not without else None
    app = workers.boot(settings=validate(settings_dict(url, database)))
    try:
        request = _push(app, without)
        worker = Worker(app)
        thread = threading.Thread(target=worker.run)
        thread.start()
        deadline = time.monotonic() + 60
        while app.store.jobs.count_documents({"status": {"$in": ["completed", "failed"]}}) < 2:
            assert time.monotonic() < deadline, "the jobs did not finish"
            time.sleep(0.05)
        worker.stop()
        thread.join(30)
        stored = {doc["type"]: doc.get("trace") for doc in app.store.jobs.find()}
    finally:
        workers.shutdown()
    loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    return {"request": request, "stored": stored, "spans": _spans(exporter), "loaded": loaded}


def _exporter() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def _push(app: Any, without: bool) -> dict[str, str] | None:
    if without:
        app.push_named("RecordJob", {})
        app.push_named("FailJob", {"message": "boom"}, retry=0)
        return None
    from opentelemetry import trace

    with trace.get_tracer("app").start_as_current_span("request") as span:
        app.push_named("RecordJob", {})
        app.push_named("FailJob", {"message": "boom"}, retry=0)
        return _ids(span.get_span_context())


def _spans(exporter: Any) -> list[dict[str, Any]]:
    if exporter is None:
        return []
    return [
        {
            "name": span.name,
            "parent": f"{span.parent.span_id:016x}" if span.parent else None,
            "links": [_ids(link.context) for link in span.links],
            "attributes": dict(span.attributes or {}),
            "status": span.status.status_code.name,
            "events": [event.name for event in span.events],
        }
        for span in exporter.get_finished_spans()
    ]


def _ids(context: Any) -> dict[str, str]:
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], "--without-otel" in sys.argv)))
