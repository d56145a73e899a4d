"""Base types of the event contract: tolerant on read, strict on write.

Read: unknown fields are ignored, so a producer may add optional fields without breaking a
consumer (CONTRACT.md: "You may add optional fields"). Write: `Payload.new(...)` refuses a
field the contract does not name, so a typo never leaves a service as a silently dropped value.
Money is a decimal string on the wire and `Decimal` in memory; never a float.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, PlainSerializer, field_validator

# A decimal amount that travels as a string ("45.00") and is never a float.
DecimalStr = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]


class ContractModel(BaseModel):
    """A frozen, tolerant value of the contract (a payload or a part of one)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def new(cls, **fields: Any) -> Self:
        """Build a value to publish; a field the contract does not name is an error."""
        unknown = set(fields) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        return cls(**fields)

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form: JSON types only, optional fields left out when unset."""
        return self.model_dump(mode="json", exclude_none=True)


class Payload(ContractModel):
    """The `data` of one event type; `event_type` is its CloudEvents `type`."""

    event_type: ClassVar[str]


class Money(ContractModel):
    amount: DecimalStr
    currency: str

    @field_validator("amount", mode="before")
    @classmethod
    def _no_floats(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError("money amounts are decimal strings, never floats")
        return value

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str) -> str:
        if len(value) != 3 or not value.isalpha():
            raise ValueError("currency must be a 3-letter ISO 4217 code")
        return value.upper()
