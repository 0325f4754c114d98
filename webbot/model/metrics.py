"""Prometheus metrics of generation: latency histograms, token counters and gauges of what is in flight.

Each app gets its own registry (so tests can build many apps in one process); `/metrics`
serves it in the Prometheus text format. The engine updates the counters and histograms
as it works; the gauges are read from the bot when Prometheus scrapes.
"""

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)


class Metrics:
    """The instruments, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "webbot_time_to_first_token_seconds", "From a request's arrival to its first generated token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            "webbot_time_per_output_token_seconds", "Time between consecutive tokens of one reply.",
            buckets=TOKEN_BUCKETS, registry=r)
        self.generated_tokens = Counter("webbot_generated_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter(
            "webbot_prompt_tokens", "Prompt tokens, by whether their KV cache was reused or computed.",
            ["source"], registry=r)
        self.replies = Counter("webbot_replies", "Replies finished, by reason (stop, length, cancelled, error).",
                               ["reason"], registry=r)
        self.rejected = Counter("webbot_rejected_requests", "Requests refused with 503 because the queue was full.",
                                registry=r)
        self.evictions = Counter("webbot_kv_cache_evictions", "Cached conversations whose KV cache left memory "
                                 "to stay within its budget (to the disk tier, when there is one).", registry=r)
        self.reused_by_tier = Counter("webbot_reused_prompt_tokens", "Prompt tokens whose KV cache was reused, by "
                                      "where it was kept: ram, or disk (read back from a file).", ["tier"],
                                      registry=r)
        self.disk_evictions = Counter("webbot_kv_disk_evictions", "KV cache files removed to stay within the "
                                      "disk budget.", registry=r)
        self.kv_disk_bytes = Gauge("webbot_kv_disk_bytes", "Bytes of KV cache files on disk.", registry=r)
        self.queue_depth = Gauge("webbot_queue_depth", "Requests waiting for a free slot.", registry=r)
        self.active_streams = Gauge("webbot_active_streams", "Replies being generated.", registry=r)
        self.kv_cache_bytes = Gauge("webbot_kv_cache_bytes", "KV cache memory in use, cached and in flight.",
                                    registry=r)
        self.kv_cache_budget = Gauge("webbot_kv_cache_budget_bytes", "Memory budget of the cached KV.", registry=r)
        for reason in ("stop", "length", "cancelled", "error"):
            self.replies.labels(reason)
        for source in ("reused", "computed"):
            self.prompt_tokens.labels(source)
        for tier in ("ram", "disk"):
            self.reused_by_tier.labels(tier)

    def watch(self, bot) -> None:
        """Read the gauges from the bot (`Bot.gauges()`) at scrape time."""
        self.queue_depth.set_function(lambda: bot.gauges()["queue_depth"])
        self.active_streams.set_function(lambda: bot.gauges()["active_streams"])
        self.kv_cache_bytes.set_function(lambda: bot.gauges()["kv_cache_bytes"])
        self.kv_cache_budget.set_function(lambda: bot.gauges()["kv_cache_budget"])
        self.kv_disk_bytes.set_function(lambda: bot.gauges().get("kv_disk_bytes", 0))

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
