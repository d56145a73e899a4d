"""Base types of the event contract: tolerant on read, strict on write, bounded always.

Read: unknown fields are ignored, so a producer may add optional fields without breaking a
consumer (CONTRACT.md: "You may add optional fields"). Write: `Payload.new(...)` refuses a
field the contract does not name, so a typo never leaves a service as a silently dropped value.

Money (CONTRACT.md "Rules every consumer keeps": money at most what a currency can sensibly
charge, ISO 4217 currencies) is held here, once, for `Money`, `Fee` and the payloads that carry
`amount` and `currency` side by side:
- an amount is a decimal string on the wire and a `Decimal` in memory, never a float, and
  more than zero;
- a currency is an ISO 4217 code of money (Babel's list, less the codes of metals, funds and
  tests), upper case;
- an amount has no more decimal places than its currency has (JPY 0, EUR 2, KWD 3; Babel's
  precision; trailing zeros are no decimal places: "45.000" EUR is 45 euros) and is at most
  that currency's maximum (`max_amount`).
Every check looks at the decimal's digits and exponent before anything formats it, so
`1E+1000000` is refused as cheaply as `1E+3`; validation messages never quote the value.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self

from babel.numbers import get_currency_precision, list_currencies
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)


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


# --- currencies --------------------------------------------------------------------------------

# ISO 4217 codes that are not money a practice charges: precious metals, bond-market units,
# the IMF's SDR, the testing code and "no currency".
_NOT_MONEY = frozenset({"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"})
CURRENCIES: frozenset[str] = frozenset(code for code in list_currencies() if code not in _NOT_MONEY)

DEFAULT_MAX_MAJOR_UNITS = 100_000
# The most one amount may be, in major units, where a unit is worth so little that 100 000 of
# it is a modest sum (a unit worth between about 1/1000 and 1/20 of a US dollar: ten million;
# worth less: a billion). Every other currency: DEFAULT_MAX_MAJOR_UNITS.
_MAX_MAJOR_UNITS: dict[str, int] = {
    **dict.fromkeys(
        (
            "AFN",
            "ALL",
            "AMD",
            "AOA",
            "BDT",
            "CLP",
            "CRC",
            "CVE",
            "DJF",
            "DZD",
            "ETB",
            "GYD",
            "HTG",
            "HUF",
            "INR",
            "ISK",
            "JMD",
            "JPY",
            "KES",
            "KGS",
            "KMF",
            "KZT",
            "LKR",
            "LRD",
            "MKD",
            "MZN",
            "NPR",
            "PHP",
            "PKR",
            "RSD",
            "RUB",
            "SDG",
            "SOS",
            "THB",
            "TWD",
            "UYU",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
            "YER",
        ),
        10_000_000,
    ),
    **dict.fromkeys(
        (
            "ARS",
            "BIF",
            "BYR",
            "COP",
            "GNF",
            "IDR",
            "IQD",
            "IRR",
            "KHR",
            "KPW",
            "KRW",
            "LAK",
            "LBP",
            "MGA",
            "MMK",
            "MNT",
            "MWK",
            "NGN",
            "PYG",
            "RWF",
            "SLL",
            "STD",
            "SYP",
            "TZS",
            "UGX",
            "UZS",
            "VND",
        ),
        1_000_000_000,
    ),
}
ANY_CURRENCY_MAX = Decimal(max(_MAX_MAJOR_UNITS.values()))
ANY_CURRENCY_MAX_PLACES = max(get_currency_precision(code) for code in CURRENCIES)

_AMOUNT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII digits only
_AMOUNT_TEXT_MAX_CHARS = 40


def decimal_places(currency: str) -> int:
    """How many decimal places an amount of `currency` may have (JPY 0, EUR 2, KWD 3)."""
    return get_currency_precision(currency)


def max_amount(currency: str) -> Decimal:
    """The most one amount of `currency` may be (100000.00 EUR, 10000000 JPY)."""
    places = decimal_places(currency)
    return Decimal(_MAX_MAJOR_UNITS.get(currency, DEFAULT_MAX_MAJOR_UNITS)).quantize(Decimal(1).scaleb(-places))


def _places_used(amount: Decimal) -> int:
    """Decimal places that carry a digit other than zero; cheap for any exponent."""
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # a finite decimal (checked before)
    if exponent >= 0:
        return 0
    trailing_zeros = 0
    for digit in reversed(amount.as_tuple().digits):
        if digit != 0:
            break
        trailing_zeros += 1
    return max(0, -exponent - trailing_zeros)


def money_problem(amount: Decimal, currency: str) -> str | None:
    """Why `amount` is not an amount of `currency`, or None when it is (never quotes the amount)."""
    if amount > max_amount(currency):  # a comparison: cheap whatever the exponent
        return f"is more than the most a {currency} amount may be ({max_amount(currency)})"
    places = decimal_places(currency)
    if _places_used(amount) > places:
        return f"has more decimal places than {currency} has ({places})"
    return None


def _currency_code(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 3:
        raise ValueError("currency must be a 3-letter ISO 4217 code")
    code = value.upper()
    if code not in CURRENCIES:
        raise ValueError("currency must be an ISO 4217 currency code, e.g. AUD, EUR, JPY")
    return code


def _parse_amount(value: Any) -> Decimal:
    """A positive, finite decimal from a string, an integer or a Decimal (never a float)."""
    if isinstance(value, float):
        raise ValueError("money amounts are decimal strings, never floats")
    if isinstance(value, bool):
        raise ValueError('an amount is a decimal string such as "45.00"')
    if isinstance(value, str):
        if len(value) > _AMOUNT_TEXT_MAX_CHARS or not _AMOUNT_TEXT.fullmatch(value):
            raise ValueError('an amount is a decimal string such as "45.00"')
        value = Decimal(value)
    elif isinstance(value, int):
        value = Decimal(value)
    elif not isinstance(value, Decimal):
        raise ValueError('an amount is a decimal string such as "45.00"')
    if not value.is_finite():
        raise ValueError("an amount must be a finite number")
    if value <= 0:
        raise ValueError("an amount must be more than zero")
    return Decimal(value)


def _within_any_currency(value: Decimal) -> Decimal:
    if value > ANY_CURRENCY_MAX:
        raise ValueError(f"is more than any amount may be ({ANY_CURRENCY_MAX})")
    if _places_used(value) > ANY_CURRENCY_MAX_PLACES:
        raise ValueError(f"has more decimal places than any currency has ({ANY_CURRENCY_MAX_PLACES})")
    return value


def _as_text(value: Decimal) -> str:
    return format(value, "f")  # a validated amount has at most a few dozen digits


# A decimal that travels as a string ("45.00"); no bounds of its own: the contract uses `Amount`.
DecimalStr = Annotated[Decimal, PlainSerializer(_as_text, return_type=str)]
_AMOUNT_SCHEMA = {"type": "string", "pattern": r"^\d+(\.\d+)?$", "examples": ["45.00"]}
# An amount of money; `FlatMoney` checks it against its currency.
Amount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    PlainSerializer(_as_text, return_type=str),
    WithJsonSchema(_AMOUNT_SCHEMA),
]
# An amount whose currency is not beside it (e.g. "in the charge's currency"): bounded by the
# most any currency allows; the service that knows the currency checks the rest (`money_problem`).
AnyCurrencyAmount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    AfterValidator(_within_any_currency),
    PlainSerializer(_as_text, return_type=str),
    WithJsonSchema(_AMOUNT_SCHEMA),
]
Currency = Annotated[
    str,
    BeforeValidator(_currency_code),
    WithJsonSchema({"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 code"}),
]


class FlatMoney(ContractModel):
    """A value with `amount` and `currency` fields: the amount must fit its currency.

    Used by `Money` and by payloads that carry the two side by side (CONTRACT.md lists them
    flat), so the rule is checked the same everywhere. Declares no fields of its own.
    """

    @model_validator(mode="after")
    def _amount_fits_its_currency(self) -> Self:
        problem = money_problem(getattr(self, "amount"), getattr(self, "currency"))  # noqa: B009
        if problem is not None:
            raise ValueError(f"the amount {problem}")
        return self


class Money(FlatMoney):
    """`{"amount": "45.00", "currency": "AUD"}`."""

    amount: Amount
    currency: Currency
