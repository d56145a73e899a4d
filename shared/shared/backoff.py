"""One backoff rule for every retry: exponential, capped, with jitter.

`backoff_delay(attempt, base=…, cap=…)` is the wait before try `attempt + 1` after `attempt`
tries failed (or, for an acknowledgement, how long try `attempt` waits): the nominal delay
`min(cap, base × 2^(attempt−1))`, less a random part of it so that many clients that failed
together (a provider outage, a broker restart) do not all retry in the same second.

- `jitter=0.5` ("equal jitter", the default): uniform in [nominal/2, nominal] — never sooner
  than half the nominal delay, never later than it (the cap is never exceeded).
- `jitter=1.0` ("full jitter"): uniform in [0, nominal].
- `jitter=0.0`: exactly the nominal delay.

Used both for retries stored in the database (the next attempt's due time) and for
in-process retries (`await asyncio.sleep(backoff_delay(…))`). `rng` is the random source, a
function returning a float in [0, 1): tests pass a fixed one (`rng=lambda: 0.0` is the
shortest delay, `rng=lambda: 1.0` the nominal one).
"""

from __future__ import annotations

import random
from collections.abc import Callable

EQUAL_JITTER = 0.5
FULL_JITTER = 1.0


def nominal_delay(attempt: int, *, base: float, cap: float) -> float:
    """base, 2×base, 4×base, … capped at `cap` (attempt 1 → base)."""
    exponent = max(0, attempt - 1)
    if exponent >= 64:  # 2**64 × base is past any cap; avoid a float overflow for absurd attempts
        return float(cap)
    return float(min(cap, base * 2**exponent))


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: float = EQUAL_JITTER,
    rng: Callable[[], float] = random.random,
) -> float:
    """The jittered delay for `attempt`: in [(1 − jitter) × nominal, nominal]."""
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")
    nominal = nominal_delay(attempt, base=base, cap=cap)
    return nominal * (1.0 - jitter * (1.0 - rng()))
