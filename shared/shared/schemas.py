"""A JSON Schema (draft 2020-12) per event type, generated from the contract models, for
integrators who write producers and consumers in other languages.

Guarantees: each schema is built from the same pydantic models (`shared.contracts`) that
`parse_envelope` validates with, so it cannot drift from what the services accept; it describes
the whole structured-mode message (the CloudEvents envelope with `type` fixed to the event type)
and holds the payload alone under `$defs`, by its model's name, for binary mode, where the record
value is the `data` alone. Every schema has a `$id` and `$schema`, and only `#/$defs/...`
references, so each file stands by itself.

One file per event type and producer, `<producer>/<event type>.json` (`upstream/`,
`booking/`, ... `deadletter/`): one type string may mean two things on two topics
(`booking.completed` from upstream is not booking's), so the producer is part of the path.
`infra/check-schemas.sh` regenerates them and fails when the committed files differ.

What a schema cannot say: the checks a model makes across fields or against a table (a
currency's decimal places and maximum, a time's year range, a phone's E.164 number plan) are
the service's; a message a schema accepts may still be refused by the contract, never the
other way round for the fields it states.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .contracts.base import Payload
from .contracts.envelope import Envelope
from .contracts.registry import TOPIC_EVENTS

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# An identifier, not an address to fetch: the files are the schemas' home (docs/schemas/).
SCHEMA_BASE_URI = "https://cancellations.example/schemas/"


def producer(model: type[Payload]) -> str:
    """Who publishes events of this model: the contract module it is declared in."""
    return model.__module__.rsplit(".", 1)[-1]


def schema_path(model: type[Payload]) -> str:
    """Where the model's schema lives, relative to the schema directory."""
    return f"{producer(model)}/{model.event_type}.json"


def _models() -> Iterator[tuple[type[Payload], list[str]]]:
    """Every contract model once, with the topics it may appear on, in a stable order."""
    topics: dict[type[Payload], list[str]] = {}
    for topic, registry in TOPIC_EVENTS.items():
        for model in registry.values():
            topics.setdefault(model, []).append(topic)
    for model in sorted(topics, key=schema_path):
        yield model, sorted(topics[model])


def event_schema(model: type[Payload], topics: list[str]) -> dict[str, Any]:
    """The JSON Schema of one event type: the envelope, with `data` the model's own schema."""
    data = model.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = data.pop("$defs", {})
    defs[model.__name__] = data
    envelope = Envelope.model_json_schema(ref_template="#/$defs/{model}")
    envelope.pop("title", None)
    defs.update(envelope.pop("$defs", {}))
    properties = envelope["properties"]
    properties["type"] = {"const": model.event_type, "type": "string", "title": "Type"}
    properties["data"] = {"$ref": f"#/$defs/{model.__name__}"}
    summary = (model.__doc__ or "").strip()
    return {
        "$schema": DRAFT_2020_12,
        "$id": SCHEMA_BASE_URI + schema_path(model),
        "title": model.event_type,
        "description": (
            (summary + "\n\n" if summary else "")
            + f"A CloudEvents 1.0 message (structured mode) on {', '.join(topics)}. In binary mode the "
            f"record value is `data` alone: validate it against #/$defs/{model.__name__}."
        ),
        **envelope,
        "$defs": dict(sorted(defs.items())),
    }


def schemas() -> dict[str, dict[str, Any]]:
    """Relative path -> schema, for every event type of the contract."""
    return {schema_path(model): event_schema(model, topics) for model, topics in _models()}


def write(out: Path) -> list[Path]:
    """Write every schema under `out`, and remove any other JSON file there (a model renamed or
    gone), so the directory holds exactly the contract."""
    written = []
    for relative, schema in schemas().items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    for stale in set(out.rglob("*.json")) - set(written):
        stale.unlink()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a JSON Schema per event type of the contract")
    parser.add_argument("--out", default="docs/schemas")
    args = parser.parse_args()
    written = write(Path(args.out))
    print(f"{args.out}: {len(written)} event schemas")


if __name__ == "__main__":
    main()
