"""The runner's HTTP endpoints: ``/healthz`` (the process answers), ``/readyz`` (the kernel runs and
bars arrive, no symbol is stale, or it is still warming up) and ``/metrics`` (Prometheus text format,
by prometheus-client)."""

from __future__ import annotations

from collections.abc import Callable

from farmkit.health import HealthServer as BaseHealthServer
from farmkit.health import Metrics

# name -> (type, help, status key)
_METRICS = {
    "farm_bars_received_total": ("counter", "Bars accepted from the bus by this process.", "bars_received"),
    "farm_bars_processed_total": ("counter", "Bars the strategy has recorded in this process.", "bars_processed"),
    "farm_orders_total": ("counter", "Orders the strategy submitted in this process.", "orders"),
    "farm_fmel_backlog_bars": ("gauge", "Bars decided whose FMEL is not committed yet.", "fmel_backlog"),
    "farm_fmel_spilled_batches": ("gauge", "FMEL batches waiting on local disk for the store.",
                                  "fmel_spilled_batches"),
    "farm_fmel_committed_bars": ("gauge", "Bar number up to which FMEL is committed.", "fmel_committed"),
    "farm_decision_lag_seconds": ("gauge", "Seconds from a bar's arrival to the end of its decision.",
                                  "decision_lag_seconds"),
    "farm_last_bar_age_seconds": ("gauge", "Seconds since the last bar arrived (or since start).",
                                  "last_bar_age_seconds"),
}


def render_metrics(report: dict, labels: dict[str, str]) -> str:
    """Prometheus text exposition of a runner report (see ``Runner.report``)."""
    metrics = Metrics(labels)

    def emit(name, kind, text, value, **extra):
        metrics.describe(name, kind, text)
        if value is not None:
            metrics.set(name, float(value), **extra)

    emit("farm_up", "gauge", "The runner process is up.", 1)
    emit("farm_kernel_running", "gauge", "The agent notebook's kernel is running.", int(report["kernel_running"]))
    emit("farm_ready", "gauge", "The runner reports ready.", int(report["ready"]))
    status = report.get("status") or {}
    for name, (kind, text, key) in _METRICS.items():
        emit(name, kind, text, report.get(key, status.get(key)))
    ages = report.get("bar_ages") or {}
    if ages:
        stale = status.get("stale_symbols") or {}
        for symbol, age in sorted(ages.items()):
            emit("farm_runner_bar_age_seconds", "gauge",
                 "Seconds since the symbol's last bar arrived (or since start).", age, symbol=symbol)
            emit("farm_runner_stale", "gauge", "1 when the symbol is stale (market open, no bar for too long).",
                 int(symbol in stale), symbol=symbol)
        emit("farm_runner_stale_symbols", "gauge", "Symbols whose market is open and whose bars stopped coming.",
             len(stale))
    if "stale_decisions" in status:
        emit("farm_runner_stale_decisions_total", "counter", "Bars decided while a symbol of the strategy was stale.",
             status["stale_decisions"])
    drift = status.get("drift")
    if drift is not None:
        emit("farm_runner_drifting", "gauge", "The run's trading drifted from its backtest baseline.",
             int(bool(drift.get("drifting"))))
    for outcome, count in sorted((status.get("messages") or {}).items()):
        emit("farm_messages_total", "counter", "Bus messages by what was done with them.", count, outcome=outcome)
    return metrics.render()


class HealthServer(BaseHealthServer):
    """The shared server (:class:`farmkit.health.HealthServer`) fed from a runner report (a dict with
    ``ready``, ``reason``, ``kernel_running``, ``status``...)."""

    def __init__(self, report: Callable[[], dict], labels: dict[str, str], host: str = "0.0.0.0", port: int = 8080):
        self.report, self.labels = report, labels

        def ready() -> tuple[bool, str]:
            current = report()
            return bool(current["ready"]), str(current["reason"])

        super().__init__(ready, lambda: render_metrics(report(), labels), host=host, port=port)
