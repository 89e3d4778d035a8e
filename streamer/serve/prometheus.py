"""``GET /metrics``: the service's counters in the Prometheus text format (version 0.0.4).

Every metric name here is part of the interface (dashboards read them): ``streamer_stream_*``
per served stream (label ``stream``; ``streamer_stream_overlay_age_seconds`` is the honest
age of the parse on screen, ``streamer_stream_parse_fps`` its share of the one model),
``streamer_parse_*`` for the photo parse pool, ``streamer_model_*`` for the shared model, and
the server's ``process_resident_memory_bytes``.

Example:
    >>> print(metrics_text(service))
    # HELP streamer_stream_info Served streams (value 1) with source and state.
    ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.core.metrics import percentiles
from streamer.io.sources import redact_url
from streamer.parsing.parser import HumanParser
from streamer.serve.service import Service

#: ``({label: value}, sample)`` rows of one metric.
Samples = list[tuple[dict[str, str], float]]
#: ``({label: value}, {"p50": ms, "p95": ms}, sum in seconds, count)`` rows of one summary.
SummaryRows = list[tuple[dict[str, str], dict[str, float], float, int]]


@dataclass
class MetricsText:
    """Lines of a Prometheus text exposition, one metric (HELP, TYPE, samples) at a time."""

    lines: list[str] = field(default_factory=list)

    def metric(self, name: str, kind: str, help_text: str, samples: Samples) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(_sample(name, labels, value))

    def summary(self, name: str, help_text: str, rows: SummaryRows) -> None:
        """A Prometheus summary: p50/p95 (milliseconds in) as quantiles, _sum, _count."""
        samples: list[tuple[str, dict[str, str], float]] = []
        for labels, ms, total, count in rows:
            samples += [(name, {**labels, "quantile": q}, ms[p] / 1000.0)
                        for q, p in (("0.5", "p50"), ("0.95", "p95"))]
            samples += [(f"{name}_sum", labels, total), (f"{name}_count", labels, count)]
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} summary")
        for sample, labels, value in samples:
            self.lines.append(_sample(sample, labels, value))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


STREAM_COUNTERS = (("frames_read", "Frames decoded."), ("frames_parsed", "Frames parsed."),
                   ("frames_written", "Frames published to viewers."),
                   ("frames_dropped", "Frames skipped to hold latency."),
                   ("reconnects", "Successful reconnections of the source."),
                   ("decode_errors", "Packets or frames that could not be decoded."))
PARSE_COUNTERS = (("cache_hits", "Parses answered from the cache."),
                  ("cache_misses", "Parses computed."),
                  ("cache_shared", "Parses that joined an identical one running."),
                  ("rejected", "Parses refused with 503 (pool full)."))


def metrics_text(service: Service) -> str:
    """The whole exposition: streams, then the parse pool, then the process."""
    out = MetricsText()
    add_stream_metrics(out, service)
    add_parse_metrics(out, service)
    out.metric("streamer_model_parsers_built", "gauge",
               "Parsers (loaded models) this process built; streams share one.",
               [({}, HumanParser.built)])
    out.metric("streamer_model_engines_built", "gauge",
               "Engines (compiled networks) this process built.",
               [({}, HumanParser.engines_built)])
    rss = _rss_bytes()
    if rss is not None:
        out.metric("process_resident_memory_bytes", "gauge", "Resident memory of the server.",
                   [({}, rss)])
    return out.text()


def add_stream_metrics(out: MetricsText, service: Service) -> None:
    handles = list(service.streams.values())
    summaries = {h.id: h.summary() for h in handles}
    per = [({"stream": h.id}, h) for h in handles]
    out.metric("streamer_stream_info", "gauge",
               "Served streams (value 1) with source and state.",
               [({"stream": h.id, "source": redact_url(h.source), "state": h.state}, 1)
                for h in handles])
    out.metric("streamer_stream_running", "gauge", "1 while the stream runs.",
               [(lab, 1.0 if h.active else 0.0) for lab, h in per])
    out.metric("streamer_stream_fps", "gauge", "Output frames per second over the last frames.",
               [(lab, h.pipeline.metrics.current_fps()) for lab, h in per])
    out.metric("streamer_stream_fps_average", "gauge", "Output frames per second since start.",
               [(lab, summaries[h.id]["fps"]) for lab, h in per])
    out.summary(
        "streamer_stream_latency_seconds",
        "End-to-end latency (capture to published): quantiles over recent frames, sum and "
        "count over all.",
        [(lab, summaries[h.id]["latency_ms"], h.latency_sum_s,
          summaries[h.id]["frames_written"]) for lab, h in per])
    out.summary(
        "streamer_stream_overlay_age_seconds",
        "Age of the overlay shown: capture of the frame that was parsed to a frame carrying "
        "that parse published; quantiles over recent frames, sum and count over all.",
        [(lab, summaries[h.id]["overlay_age_ms"], h.overlay_sum_s, h.overlay_count)
         for lab, h in per])
    out.metric("streamer_stream_parse_fps", "gauge",
               "Frames parsed per second since start (this stream's share of the model).",
               [(lab, summaries[h.id]["parse_fps"]) for lab, h in per])
    out.metric("streamer_stream_priority", "gauge",
               "Weight of the stream's overlay age when the shared model picks what to parse.",
               [(lab, h.priority) for lab, h in per])
    for key, help_text in STREAM_COUNTERS:
        out.metric(f"streamer_stream_{key}_total", "counter", help_text,
                   [(lab, summaries[h.id][key]) for lab, h in per])
    out.metric("streamer_stream_viewers", "gauge", "MJPEG viewers connected.",
               [(lab, h.viewers) for lab, h in per])


def add_parse_metrics(out: MetricsText, service: Service) -> None:
    pool = service.pool.stats()
    out.metric("streamer_parse_workers", "gauge", "Parse worker threads.",
               [({}, pool["workers"])])
    out.metric("streamer_parse_busy", "gauge", "Parses running now.", [({}, pool["busy"])])
    out.metric("streamer_parse_queued", "gauge", "Parses waiting for a worker.",
               [({}, pool["queued"])])
    parse_sum, parse_count = service.pool.duration_totals()
    out.summary("streamer_parse_seconds",
                "Parse job duration: quantiles over recent jobs, sum and count over all.",
                [({}, percentiles([d * 1000.0 for d in list(service.pool.durations)]),
                  parse_sum, parse_count)])
    out.metric("streamer_parse_requests_total", "counter", "POST /api/parse answers by status.",
               [({"code": str(code)}, n) for code, n in sorted(service.responses.items())])
    for key, help_text in PARSE_COUNTERS:
        out.metric(f"streamer_parse_{key}_total", "counter", help_text,
                   [({}, service.counters[key])])


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}"


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    value = float(value)
    if value.is_integer():
        return str(int(value))
    return repr(round(value, 6))


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None

