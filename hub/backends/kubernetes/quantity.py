"""Kubernetes quantities (resource.Quantity's text: 2, 500m, 1.5, 8Gi, 1e3, 1091738596n), read
once, here, for the settings' checks, the spawner's CPU and memory and the capacity view's
device counts. The grammar is apimachinery's (pkg/api/resource/quantity.go); kubernetes_asyncio,
unlike the synchronous client, ships no parser (checked in 36.1)."""

from __future__ import annotations

import re
from decimal import Decimal

_GRAMMAR = re.compile(r"^(?P<number>[+-]?(\d+\.?\d*|\.\d+))(?P<suffix>[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")
_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
           "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
           "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
           "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
           "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}


def parse(text: str | int | float) -> Decimal:
    """The quantity's value in base units (cores, bytes, devices); ValueError if it is none."""
    s = str(text).strip()
    m = _GRAMMAR.match(s)
    if not m:
        raise ValueError(f"{s!r} is not a Kubernetes quantity such as 2, 500m, 8Gi")
    suffix = m.group("suffix") or ""
    try:
        number = Decimal(m.group("number"))
        if suffix not in _SUFFIX:  # an exponent: 1e3, 5E-2 ("E" alone is exa, a suffix)
            return number * Decimal(10) ** int(suffix[1:])
        return number * _SUFFIX[suffix]
    except ArithmeticError:  # decimal's Overflow and InvalidOperation: 1e999999999
        raise ValueError(f"{s!r} is out of range for a Kubernetes quantity") from None


def checked(v: str | int | float | None) -> str | None:
    """For settings: a quantity that is not negative, kept as written (None stays None)."""
    if v is None:
        return None
    if parse(v) < 0:
        raise ValueError(f"{v!r} is negative: a resource amount is 0 or more")
    return str(v)


def cores(q: str | None) -> float | None:
    """A CPU quantity in cores: "2" → 2.0, "500m" → 0.5."""
    return None if q is None else float(parse(q))


def bytes_of(q: str | None) -> int | None:
    """A memory quantity in bytes, rounded up as the API server rounds: "8Gi", "500M", "1e9"."""
    if q is None:
        return None
    value = parse(q)
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def count(q: str | int | None) -> int:
    """A count of an extended resource (whole numbers: "4", or "4000m" at worst)."""
    return 0 if q is None else int(parse(q))
