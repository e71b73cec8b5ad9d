"""The stand-in's Prometheus metrics, under TF Serving's own names, on a registry of its own.

TF Serving exports TF monitoring names with every character outside ``[a-zA-Z0-9_]`` turned
into ``:`` (``/tensorflow/serving/request_count`` -> ``:tensorflow:serving:request_count``),
latencies in microseconds with exponential buckets ``10 * 1.8**k`` (33 buckets). Dashboards
and alerts written for TF Serving therefore work against the stand-in unchanged.

One difference: TF Serving types its counters ``counter``; prometheus_client appends
``_total`` to every ``counter`` family's name, so the stand-in exposes them ``untyped`` to keep
the exact series names (queries such as ``rate(:tensorflow:serving:request_count[5m])`` are
unaffected).
"""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterable

LATENCY_BUCKETS_US: tuple[float, ...] = tuple(float(f"{10.0 * 1.8**k:.6g}") for k in range(33))
"""TF monitoring's ``Buckets::Exponential(10, 1.8, 33)`` upper bounds in microseconds (6 digits)."""

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"
LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
LOAD_LATENCY = ":tensorflow:cc:saved_model:load_latency"

_PLAIN_BELOW = 1e6
"""Bucket bounds below this print as ``%g``; larger ones in full (``%g`` would round them)."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_US, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS_US, float("inf")), self.counts, strict=True):
            running += count
            out.append(
                (
                    "+Inf"
                    if bound == float("inf")
                    else f"{bound:g}"
                    if bound < _PLAIN_BELOW
                    else f"{bound:.1f}",
                    float(running),
                )
            )
        return out


class ServerMetrics(Collector):
    """Counters and latency histograms of the stand-in; thread-safe; ``render()`` gives the page."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], float] = {}
        self._request_latency: dict[tuple[str, str, str], _Histogram] = {}
        self._runtime_latency: dict[tuple[str, str, str], _Histogram] = {}
        self._loads: dict[tuple[str, str], float] = {}
        self._load_latency: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def count_request(self, model_name: str, status: str) -> None:
        """One predict request finished with ``status`` (an error-code name: OK, NOT_FOUND, ...)."""
        with self._lock:
            key = (model_name, status)
            self._requests[key] = self._requests.get(key, 0.0) + 1

    def observe_request(self, model_name: str, api: str, latency_us: float) -> None:
        """End-to-end latency of one REST request, in microseconds."""
        with self._lock:
            self._request_latency.setdefault((model_name, api, "REST"), _Histogram()).observe(latency_us)

    def observe_runtime(self, model_name: str, api: str, latency_us: float) -> None:
        """Time spent inside the TensorFlow signature call, in microseconds."""
        with self._lock:
            self._runtime_latency.setdefault((model_name, api, "TF2"), _Histogram()).observe(latency_us)

    def count_load(self, model_path: str, *, ok: bool, latency_us: float) -> None:
        """One SavedModel load attempt of the version directory ``model_path``."""
        with self._lock:
            key = (model_path, "success" if ok else "fail")
            self._loads[key] = self._loads.get(key, 0.0) + 1
            self._load_latency[model_path] = self._load_latency.get(model_path, 0.0) + latency_us

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            requests = Metric(REQUEST_COUNT, "The total number of requests.", "unknown")
            for (model, status), value in sorted(self._requests.items()):
                requests.add_sample(REQUEST_COUNT, {"model_name": model, "status": status}, value)
            yield requests
            yield self._family(
                REQUEST_LATENCY,
                "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                ("model_name", "API", "entrypoint"),
                self._request_latency,
            )
            yield self._family(
                RUNTIME_LATENCY,
                "Distribution of wall time (in microseconds) for Tensorflow runtime.",
                ("model_name", "API", "runtime"),
                self._runtime_latency,
            )
            loads = Metric(
                LOAD_ATTEMPT_COUNT, "The number of times a SavedModel was successfully loaded.", "unknown"
            )
            for (path, status), value in sorted(self._loads.items()):
                loads.add_sample(LOAD_ATTEMPT_COUNT, {"model_path": path, "status": status}, value)
            yield loads
            latency = Metric(
                LOAD_LATENCY, "Latency in microseconds for SavedModels that were loaded.", "unknown"
            )
            for path, value in sorted(self._load_latency.items()):
                latency.add_sample(LOAD_LATENCY, {"model_path": path}, value)
            yield latency

    @staticmethod
    def _family(
        name: str, doc: str, labels: tuple[str, str, str], data: dict[tuple[str, str, str], _Histogram]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labels)
        for key, hist in sorted(data.items()):
            family.add_metric(list(key), hist.buckets(), hist.total)
        return family

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
