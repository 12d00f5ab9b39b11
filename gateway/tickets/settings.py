"""The ``tickets`` section of the site file (pydantic only): who this box is for tickets.

Example::

    tickets:
      plant_code: "330102"          # the first 6 digits of every code this box accepts
      depot: hz-xihu-03             # this box's depot and region: a ticket's scope names one
      region: hz
      products: ["18.9L"]           # what is handed out here
      issuer_public_keys:           # the plant's keys (PEM or base64 raw), any number: rotation
        - keys/plant-2026.pub.pem
        - keys/plant-2027.pub.pem
      timezone: Asia/Shanghai       # validity days are local days
      emergency_cap_per_day: 20     # 0: no emergency tickets at this box
      emergency_box_number: 7       # 0-999, unique per box of the plant (in emergency codes)
      paper_restock_level: 50       # restock alert below this many unused paper tickets
      prices_minor: {"18.9L": 1500} # what a ticket sold at the box costs (on its receipt)
      currency: CNY
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.tickets.codes import MAX_BOX_NUMBER

#: A product name as tickets and batches carry it ("18.9L", "water-18.9l").
Product = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}$")]
#: A depot or region name.
Place = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
PlantCode = Annotated[str, Field(pattern=r"^[0-9]{6}$")]


class TicketSettings(BaseModel):
    """This box's part in the ticket scheme."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plant_code: PlantCode
    depot: Place
    region: Place
    products: Annotated[tuple[Product, ...], Field(min_length=1)]
    issuer_public_keys: Annotated[tuple[Path, ...], Field(min_length=1)]
    timezone: str = "UTC"
    emergency_cap_per_day: Annotated[int, Field(ge=0, le=10_000)] = 0
    emergency_box_number: Annotated[int, Field(ge=0, le=MAX_BOX_NUMBER)] | None = None
    paper_restock_level: Annotated[int, Field(ge=0)] = 50
    prices_minor: dict[Product, Annotated[int, Field(strict=True, ge=0, le=10**12)]] = Field(
        default_factory=dict
    )
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None

    @field_validator("timezone")
    @classmethod
    def timezone_known(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Asia/Shanghai"
            ) from None
        return value

    @model_validator(mode="after")
    def prices_of_products_with_currency(self) -> Self:
        unknown = sorted(set(self.prices_minor) - set(self.products))
        if unknown:
            raise ValueError(f"prices_minor names {unknown}, not among products {self.products}")
        if self.prices_minor and self.currency is None:
            raise ValueError("prices_minor needs currency (ISO 4217, e.g. CNY)")
        return self

    @model_validator(mode="after")
    def emergency_needs_box_number(self) -> Self:
        if self.emergency_cap_per_day > 0 and self.emergency_box_number is None:
            raise ValueError(
                "emergency_cap_per_day > 0 needs emergency_box_number (0-999, unique among the"
                " plant's boxes): emergency codes carry it"
            )
        return self
