"""How to reach the utility's broker: the ``mqtt`` section of the site file. Pydantic only.

Kept apart from the link (`gateway.northbound.mqtt`) so that loading a site file never imports
aiomqtt or paho: the site config, the billing path and the operator's commands need the
settings, not the MQTT library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MqttProtocol = Literal["auto", "5", "3.1.1"]
# Where the outbox's messages go out: on a second connection of their own (client id
# ``{client_id}-out``; `gateway.northbound.publish_connection`), on the main connection with the
# commands (a broker that allows one connection per identity), or on the second connection
# unless the broker refuses it, then on the main one.
PublishConnectionMode = Literal["auto", "separate", "shared"]


class TlsSettings(BaseModel):
    """TLS towards the broker: the CA that signed the broker, and our client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "give both cert_file and key_file for a client certificate, or neither"
            )
        return self


class MqttSettings(BaseModel):
    """How to reach the utility's broker. Part of the site config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: TlsSettings | None = None
    username: str | None = None
    password_file: Path | None = None
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 100
    protocol: MqttProtocol = "auto"
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    publish_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    session_expiry_s: Annotated[int, Field(ge=0)] = 86_400
    batch_telemetry: bool = True
    batch_max: Annotated[int, Field(ge=2, le=10_000)] = 100
    drain_deadline_s: Annotated[float, Field(ge=0)] = 5.0
    publish_connection: PublishConnectionMode = "auto"

    @model_validator(mode="after")
    def password_needs_username(self) -> Self:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not")
        return self

    @model_validator(mode="after")
    def backoff_cap_above_start(self) -> Self:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class CommandLimits(BaseModel):
    """Bounds on what a command may be (the ``commands`` section of the site file).

    A command outside them is answered ``rejected`` with the reason in brackets, and changes
    nothing. The defaults suit a utility backend that issues a command and sends it at once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # [lifetime_too_long] ``expires_at - issued_at``: a command signed to be valid for years is
    # a replay waiting to happen.
    max_lifetime_s: Annotated[int, Field(ge=60)] = 86_400
    # [not_yet_valid] how far ``issued_at`` may be ahead of the gateway's clock.
    max_clock_skew_s: Annotated[int, Field(ge=0, le=86_400)] = 300
    # [amount_too_large] the largest top-up or refund, in minor units (1,000,000.00 in a
    # currency with two decimals).
    max_amount_minor: Annotated[int, Field(ge=1, le=2**53)] = 100_000_000
    # [too_large] the largest command payload, checked before it is parsed (a tariff command
    # with many versions is a few kB).
    max_payload_bytes: Annotated[int, Field(ge=1_024, le=16 * 1024 * 1024)] = 256 * 1024
    # Incoming commands waiting for the handler; beyond it the link drops them (counted, logged
    # once per interval): a flood must not grow the daemon's memory.
    max_queued: Annotated[int, Field(ge=1, le=100_000)] = 16
