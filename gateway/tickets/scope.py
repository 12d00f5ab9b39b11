"""Where a ticket may be redeemed: one region, or one depot."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from gateway.tickets.settings import Place


class Scope(BaseModel):
    """``{"region": "hz"}`` or ``{"depot": "hz-xihu-03"}``: exactly one of the two."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: Place | None = None
    depot: Place | None = None

    @model_validator(mode="after")
    def exactly_one_place(self) -> Self:
        if (self.region is None) == (self.depot is None):
            raise ValueError("a scope names exactly one of region or depot")
        return self

    def admits(self, *, depot: str, region: str) -> bool:
        """Whether a box of ``depot`` in ``region`` is inside this scope."""
        return self.depot == depot if self.depot is not None else self.region == region

    def __str__(self) -> str:
        return f"depot {self.depot}" if self.depot is not None else f"region {self.region}"
