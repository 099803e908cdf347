"""HTTP health endpoints and Prometheus metrics for the services (ingester, archive, runner).

``/healthz`` says the process answers, ``/readyz`` answers 200 or 503 with a one-line reason, ``/metrics``
is the Prometheus text format, written by prometheus-client from what :class:`Metrics` holds.

    metrics = Metrics({"service": "ingester"})
    metrics.inc("farm_ingest_messages_received_total", feed="stocks", type="bar")
    server = HealthServer(lambda: (True, "ok"), metrics.render, port=0).start()   # server.port
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

__all__ = ["HealthServer", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters, gauges and histograms with labels, thread-safe. Every metric is declared with its help
    text on first use through :meth:`describe` (or gets a generic one); ``render()`` is the /metrics body.

    Gauges may be callables, read at render time (e.g. seconds since the last message). A metric's labels
    may differ from one series to the next (prometheus-client's own metric classes fix them up front, which
    the services' per-feed and per-symbol series do not fit), so this keeps the values and hands them to
    prometheus-client as a collector.
    """

    def __init__(self, constant_labels: dict[str, str] | None = None):
        self.constant = {k: str(v) for k, v in (constant_labels or {}).items()}
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}          # name -> (type, help)
        self._values: dict[str, dict[tuple, float]] = {}
        self._gauges: dict[str, dict[tuple, Callable[[], float | None]]] = {}
        self._hist: dict[str, dict[tuple, list]] = {}        # labels -> [bucket counts..., sum, count]
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))

    def describe(self, name: str, kind: str, text: str) -> None:
        with self._lock:
            self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._help.setdefault(name, ("counter", name))
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float | Callable[[], float | None], **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._help.setdefault(name, ("gauge", name))
            if callable(value):
                self._gauges.setdefault(name, {})[key] = value
            else:
                self._values.setdefault(name, {})[key] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._help.setdefault(name, ("histogram", name))
            row = self._hist.setdefault(name, {}).setdefault(key, [0] * len(LATENCY_BUCKETS) + [0.0, 0])
            for i, bound in enumerate(LATENCY_BUCKETS):
                if value <= bound:
                    row[i] += 1
            row[-2] += value
            row[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or plain gauge (0 if never set); for tests and reports."""
        with self._lock:
            if labels:
                return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)
            return sum(self._values.get(name, {}).values())

    def families(self):
        """The metrics as prometheus-client metric families."""
        with self._lock:
            values = {n: dict(s) for n, s in self._values.items()}
            gauges = {n: dict(s) for n, s in self._gauges.items()}
            hist = {n: {k: list(r) for k, r in s.items()} for n, s in self._hist.items()}
            helps = dict(self._help)
        for name in sorted(helps):
            kind, text = helps[name]
            # prometheus-client names a counter's family without its _total; its samples keep it.
            family = Metric(name.removesuffix("_total") if kind == "counter" else name, text, kind)
            sample = f"{family.name}_total" if kind == "counter" else name
            series = dict(values.get(name, {}))
            for key, read in gauges.get(name, {}).items():
                value = read()
                if value is not None:
                    series[key] = value
            for key, value in sorted(series.items()):
                family.add_sample(sample, self._labels(key), float(value))
            for key, row in sorted(hist.get(name, {}).items()):
                base = self._labels(key)
                for bound, count in zip(LATENCY_BUCKETS, row):
                    family.add_sample(f"{name}_bucket", {**base, "le": repr(float(bound))}, count)
                family.add_sample(f"{name}_bucket", {**base, "le": "+Inf"}, row[-1])
                family.add_sample(f"{name}_sum", base, row[-2])
                family.add_sample(f"{name}_count", base, row[-1])
            yield family

    def _labels(self, key: tuple) -> dict[str, str]:
        return dict(sorted({**self.constant, **{k: str(v) for k, v in key}}.items()))

    def render(self) -> str:
        return generate_latest(self._registry).decode()


class _Collector:
    """prometheus-client's collector protocol over a :class:`Metrics` (whose ``describe`` means otherwise)."""

    def __init__(self, metrics: Metrics):
        self.collect = metrics.families


class HealthServer:
    """Serves ``/healthz``, ``/readyz`` (from ``ready() -> (bool, reason)``) and ``/metrics`` (from
    ``metrics() -> str``) on a thread. ``port=0`` picks a free port (``server.port`` says which)."""

    def __init__(self, ready: Callable[[], tuple[bool, str]], metrics: Callable[[], str], host: str = "0.0.0.0",
                 port: int = 8080):
        self.ready, self.metrics = ready, metrics
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                try:
                    if path == "/healthz":
                        self._send(200, "ok\n")
                    elif path == "/readyz":
                        ok, reason = outer.ready()
                        self._send(200 if ok else 503, f"{reason}\n")
                    elif path == "/metrics":
                        # generate_latest writes the 0.0.4 text format, which every Prometheus reads
                        self._send(200, outer.metrics(), "text/plain; version=0.0.4; charset=utf-8")
                    else:
                        self._send(404, "not found: try /healthz, /readyz or /metrics\n")
                except Exception as exc:  # noqa: BLE001 - a probe must get an answer, not a dropped socket
                    self._send(500, f"error: {type(exc).__name__}: {exc}\n")

            def _send(self, code: int, body: str, kind: str = "text/plain; charset=utf-8"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):   # probes every few seconds would flood the pod's log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
