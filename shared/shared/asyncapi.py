"""Each service's AsyncAPI 3.0 document, generated from its code.

The document is built from the same `ServiceDefinition` that wires the subscribers and
names what the service publishes, with payload schemas from the contract models, so it cannot
drift from what the service does. `make docs` writes one JSON file per service, and
`infra/check-schemas.sh` fails when the committed ones (`docs/asyncapi/`) differ from a fresh run
or the AsyncAPI validator refuses one.

The documents describe the contract, not one deployment: they are built in
`DOCUMENTATION_ENVIRONMENT` (development, the sandbox gateway, every other setting at its
default) whatever the caller's environment holds, so they are the same on every machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .contracts.base import Payload
from .contracts.deadletter import MessageDeadLettered
from .contracts.envelope import Envelope
from .contracts.registry import models_for
from .service import ServiceDefinition
from .topics import dead_letter_topic

# service name -> the module whose `definition()` builds it
SERVICE_MODULES = {
    "booking": "booking.app",
    "cancellation-policy": "cancellation_policy.app",
    "scoring": "scoring.app",
    "billing": "billing.app",
    "notification": "notification.app",
    "pms-sync": "pms_sync.app",
}


def _channel_id(topic: str) -> str:
    return topic.replace(".", "_").replace("-", "_")


def _message_id(event_type: str) -> str:
    return event_type.replace(".", "_")


def _message(model: type[Payload]) -> dict[str, Any]:
    envelope = Envelope.model_json_schema()
    envelope["properties"]["type"] = {"const": model.event_type, "type": "string"}
    envelope["properties"]["data"] = {"$ref": f"#/components/schemas/{model.__name__}"}
    envelope.pop("title", None)
    return {
        "name": model.event_type,
        "title": model.event_type,
        "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else model.event_type,
        "contentType": "application/cloudevents+json",
        "payload": envelope,
    }


def document(definition: ServiceDefinition) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}

    def add_models(models: list[type[Payload]]) -> list[str]:
        ids = []
        for model in models:
            message_id = _message_id(model.event_type)
            messages.setdefault(message_id, _message(model))
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas.setdefault(model.__name__, schema)
            ids.append(message_id)
        return ids

    def channel(topic: str, models: list[type[Payload]]) -> str:
        cid = _channel_id(topic)
        entry = channels.setdefault(cid, {"address": topic, "messages": {}, "bindings": {"kafka": {"topic": topic}}})
        for message_id in add_models(models):
            entry["messages"][message_id] = {"$ref": f"#/components/messages/{message_id}"}
        return cid

    for topic, handlers in definition.consumes.items():
        # The service receives every event type of the topic; those it has no handler for
        # it acknowledges without effect.
        models = sorted(models_for(topic).values(), key=lambda m: m.event_type)
        cid = channel(topic, models)
        operations[f"receive_{cid}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": "handles: " + ", ".join(sorted(handlers)) if handlers else "received",
            "messages": [{"$ref": f"#/channels/{cid}/messages/{_message_id(m.event_type)}"} for m in models],
            "bindings": {"kafka": {"groupId": {"type": "string", "enum": [definition.name]}}},
        }
    publishes: dict[str, Sequence[type[Payload]]] = {
        **definition.publishes,
        dead_letter_topic(definition.name): [MessageDeadLettered],
    }
    for topic, published in publishes.items():
        ordered = sorted(published, key=lambda m: m.event_type)
        cid = channel(topic, list(ordered))
        operations[f"send_{cid}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{_message_id(m.event_type)}"} for m in ordered],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": definition.name, "version": "1.0.0", "description": definition.description},
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "kafka": {"host": definition.settings.kafka_bootstrap_servers, "protocol": "kafka"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


DOCUMENTATION_ENVIRONMENT = {"ENVIRONMENT": "development", "PAYMENT_GATEWAY": "sandbox"}


@contextmanager
def _documentation_environment() -> Iterator[None]:
    """The process environment is DOCUMENTATION_ENVIRONMENT alone while the definitions are
    built (settings read it when a definition is built, never later), and as it was after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(DOCUMENTATION_ENVIRONMENT)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def service_documents() -> dict[str, dict[str, Any]]:
    docs = {}
    with _documentation_environment():
        definitions = {name: importlib.import_module(module).definition() for name, module in SERVICE_MODULES.items()}
    for name, definition in definitions.items():
        docs[name] = document(definition)
    return docs


def event_types_in(doc: dict[str, Any]) -> set[str]:
    return {m["name"] for m in doc["components"]["messages"].values()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write each service's AsyncAPI document")
    parser.add_argument("--out", default="docs/asyncapi")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in service_documents().items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
        print(f"{path}: {len(doc['channels'])} channels, {len(doc['components']['messages'])} messages")


if __name__ == "__main__":
    main()
