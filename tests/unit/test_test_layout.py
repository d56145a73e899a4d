"""The suite runs with pytest's default `rootdir`-based imports, where two test modules with the
same file name in different tiers collide at collection and stop the whole run: names are unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]
