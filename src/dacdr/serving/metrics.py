"""Prometheus metrics of the service (`prometheus_client`), correct across worker processes.

One process: the metrics live in a registry of their own. Several workers (`dacdr serve --workers N`):
`PROMETHEUS_MULTIPROC_DIR` is set before any worker starts, every worker writes its values there, and
`/metrics` on any worker aggregates all of them (counters and histograms summed; `dacdr_model_info` one
line per live worker, labelled with its pid).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # the `_created` series double the output and no dashboard here reads them


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServiceMetrics:
    def __init__(self) -> None:
        # Multiprocess values are process-wide files: metrics are then created once per process.
        self.registry = None if multiprocess_mode() else CollectorRegistry(auto_describe=True)
        reg = {"registry": self.registry}
        self.requests = Counter("dacdr_requests", "HTTP requests by method, route and status.",
                                ["method", "path", "status"], **reg)
        self.errors = Counter("dacdr_request_errors", "Responses with status >= 400, by route and kind.",
                              ["path", "kind"], **reg)
        self.latency = Histogram("dacdr_request_duration_seconds",
                                 "Request latency, from first byte in to last byte out.", ["path"],
                                 buckets=LATENCY_BUCKETS, **reg)
        self.items = Counter("dacdr_items_scored", "Candidate items scored.", **reg)
        self.rebalances = Counter("dacdr_connections_rebalanced", "Connections a worker over its share of open "
                                  "connections closed after a response (--balance-connections).", **reg)
        self.reloads = Counter("dacdr_model_reloads", "Reload attempts by outcome.", ["outcome"], **reg)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)
        self.model = Gauge("dacdr_model_info", "The model being served (1; 0 for a version swapped out).",
                           ["version", "name", "engine"], multiprocess_mode="liveall", **reg)
        self._model_labels: tuple[str, str, str] | None = None

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        self.requests.labels(method, path, str(status)).inc()
        if status >= 400:
            self.errors.labels(path, "client" if status < 500 else "server").inc()
        self.latency.labels(path).observe(seconds)

    def add_items(self, n: int) -> None:
        self.items.inc(n)

    def rebalanced(self) -> None:
        self.rebalances.inc()

    def reload(self, outcome: str) -> None:
        self.reloads.labels(outcome).inc()

    def serving(self, version: str, name: str, engine: str) -> None:
        """Record the model this process serves now."""
        labels = (version, name, engine)
        if self._model_labels and self._model_labels != labels:
            self.model.labels(*self._model_labels).set(0)
        self.model.labels(*labels).set(1)
        self._model_labels = labels

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    @staticmethod
    def process_exited(pid: int) -> None:
        if multiprocess_mode():
            multiprocess.mark_process_dead(pid)
