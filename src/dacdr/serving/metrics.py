"""A small Prometheus text exposition (format 0.0.4): request counts, errors, a latency histogram, model info.

Hand-written rather than `prometheus_client`: five metric families do not earn a dependency, and the
service keeps one process, so no multiprocess collector is needed.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(**kv: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(str(v))}"' for k, v in kv.items()) + "}"


class ServiceMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.items_scored = 0
        self.reloads: dict[str, int] = defaultdict(int)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            if status >= 400:
                self.errors[(path, "client" if status < 500 else "server")] += 1
            counts = self.buckets[path]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self.latency_sum[path] += seconds
            self.latency_count[path] += 1

    def add_items(self, n: int) -> None:
        with self._lock:
            self.items_scored += n

    def reload(self, outcome: str) -> None:
        with self._lock:
            self.reloads[outcome] += 1

    def render(self, model_version: str, model_name: str, engine: str) -> str:
        lines: list[str] = []
        with self._lock:
            lines += ["# HELP dacdr_requests_total HTTP requests by method, route and status.",
                      "# TYPE dacdr_requests_total counter"]
            for (method, path, status), n in sorted(self.requests.items()):
                lines.append(f"dacdr_requests_total{_labels(method=method, path=path, status=str(status))} {n}")
            lines += ["# HELP dacdr_request_errors_total Responses with status >= 400, by route and kind.",
                      "# TYPE dacdr_request_errors_total counter"]
            for (path, kind), n in sorted(self.errors.items()):
                lines.append(f"dacdr_request_errors_total{_labels(path=path, kind=kind)} {n}")
            lines += ["# HELP dacdr_request_duration_seconds Request latency, from first byte in to last byte out.",
                      "# TYPE dacdr_request_duration_seconds histogram"]
            for path in sorted(self.buckets):
                for bound, n in zip(LATENCY_BUCKETS, self.buckets[path], strict=True):
                    lines.append(f"dacdr_request_duration_seconds_bucket{_labels(path=path, le=repr(bound))} {n}")
                lines.append(f"dacdr_request_duration_seconds_bucket{_labels(path=path, le='+Inf')} "
                             f"{self.latency_count[path]}")
                lines.append(f"dacdr_request_duration_seconds_sum{_labels(path=path)} {self.latency_sum[path]:.6f}")
                lines.append(f"dacdr_request_duration_seconds_count{_labels(path=path)} {self.latency_count[path]}")
            lines += ["# HELP dacdr_items_scored_total Candidate items scored.",
                      "# TYPE dacdr_items_scored_total counter", f"dacdr_items_scored_total {self.items_scored}"]
            lines += ["# HELP dacdr_model_reloads_total Reload attempts by outcome.",
                      "# TYPE dacdr_model_reloads_total counter"]
            for outcome in ("ok", "failed"):
                lines.append(f"dacdr_model_reloads_total{_labels(outcome=outcome)} {self.reloads[outcome]}")
        lines += ["# HELP dacdr_model_info The model being served (value is always 1).",
                  "# TYPE dacdr_model_info gauge",
                  f"dacdr_model_info{_labels(version=model_version, name=model_name, engine=engine)} 1"]
        return "\n".join(lines) + "\n"
