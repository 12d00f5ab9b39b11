"""Where else the gateway reports: the ``metrics`` and ``influx`` sections of the site file.

Pydantic only, like `gateway.northbound.settings`: loading a site file never imports
prometheus_client or influxdb_client. Each section is optional; a site without it runs
without that sink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, HttpUrl


class MetricsSettings(BaseModel):
    """``metrics``: serve Prometheus' ``/metrics`` on ``bind:port`` (docs/operator-guide.md,
    "Metrics"). Loopback by default: the counters name accounts' states and devices, which is
    nobody's business outside the box unless the operator opens it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65_535)]
    # How often the figures that need the store (outbox, journal) are read, off the event loop;
    # the in-memory counters are as fresh as this too, so a scrape never waits for a lock.
    refresh_s: Annotated[float, Field(gt=0, le=300)] = 2.0


class InfluxSettings(BaseModel):
    """``influx``: write readings, ledger entries and events to an InfluxDB v2 write API
    (docs/operator-guide.md, "InfluxDB"). The store stays the truth: the sink reads committed
    rows after its cursor and moves the cursor only after the server answered 2xx."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    org: Annotated[str, Field(min_length=1)] = "prepay"
    bucket: Annotated[str, Field(min_length=1)] = "prepay"
    # A file holding the API token (relative to the site file); none for a server without auth.
    token_file: Path | None = None
    # Rows of each kind per write request.
    # InfluxDB's guide to optimizing writes names 5,000 lines as the best batch; each request
    # has a fixed cost (the connection, the cursor's commit), so fewer, larger ones cost less.
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 5_000
    # How often the store is looked at for new rows once the sink has caught up.
    poll_interval_s: Annotated[float, Field(gt=0, le=3_600)] = 1.0
    # Per request; a server that does not answer in time is retried like one that is down.
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # The client library's own retry (urllib3 `WritesRetry`): attempts and backoff of one write.
    # After the last one the batch stays in the store and is tried again in the next round.
    max_retries: Annotated[int, Field(ge=0, le=100)] = 5
    retry_interval_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    max_retry_delay_s: Annotated[float, Field(gt=0, le=3_600)] = 125.0
    exponential_base: Annotated[int, Field(ge=1, le=10)] = 2


class HomeAssistantSettings(BaseModel):
    """``home_assistant``: announce every account to Home Assistant by MQTT discovery
    (docs/operator-guide.md, "Home Assistant"), on the gateway's own broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Home Assistant's default; a broker shared by several installations may use another.
    discovery_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")] = (
        "homeassistant"
    )
