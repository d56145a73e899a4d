"""The event types CONTRACT.md names, read from the document itself (docs/CONTRACT.md)."""

import re
from pathlib import Path

CONTRACT_DOC = Path(__file__).resolve().parents[2] / "docs" / "CONTRACT.md"

TYPE_TOKEN = r"`([a-z_]+\.[a-z_]+)`"  # exactly two dotted words: topics have three or more
LIST_ITEM_TYPES = re.compile(rf"^- ((?:{TYPE_TOKEN}\s*/\s*)*{TYPE_TOKEN})")
TOPIC_HEADING = re.compile(r"^`([a-z0-9<>_.-]+\.v\d+)`\s*$")
# The second release adds events in prose of its own; they are built issue by issue and each
# has its own tests, so the lists read here are those of the first release.
SECOND_RELEASE = "## Additions of the second release"


def documented_types_by_topic() -> dict[str, set[str]]:
    """Event types CONTRACT.md lists, under the topic heading each list sits below."""
    by_topic: dict[str, set[str]] = {}
    heading: str | None = None
    for line in CONTRACT_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith(SECOND_RELEASE):
            break
        if match := TOPIC_HEADING.match(line):
            heading = match.group(1)
        elif line.startswith("## "):
            heading = None
        elif match := LIST_ITEM_TYPES.match(line):
            assert heading is not None, f"event list item outside a topic section: {line!r}"
            by_topic.setdefault(heading, set()).update(re.findall(TYPE_TOKEN, match.group(1)))
    return by_topic
