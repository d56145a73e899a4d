"""The event contract (CONTRACT.md) as code: envelope, payload models and per-topic registries.

Import payload models from their producer's module (`shared.contracts.booking`, …); the names
every service needs to read and write messages are re-exported here.
"""

from .base import ContractModel, DecimalStr, Money, Payload
from .common import Actor, Decision, Fee, Patient
from .envelope import ContractViolation, Envelope, Event, new_envelope, parse_envelope, parse_record
from .registry import ALL_EVENT_TYPES, TOPIC_EVENTS, models_for

__all__ = [
    "ALL_EVENT_TYPES",
    "TOPIC_EVENTS",
    "Actor",
    "ContractModel",
    "ContractViolation",
    "DecimalStr",
    "Decision",
    "Envelope",
    "Event",
    "Fee",
    "Money",
    "Patient",
    "Payload",
    "models_for",
    "new_envelope",
    "parse_envelope",
    "parse_record",
]
