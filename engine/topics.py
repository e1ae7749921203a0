"""Topic names, keys and the record on each: the pipeline's public contract (README "Topics").

Every topic has the same partition count so that co-keyed topics are co-partitioned, and every key
starts with the tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.deadletter import DeadLetter
from schemas.inventory import InventoryCommand, StockEvent
from schemas.order import Order
from schemas.saga import LineResult, OrderDecision, SagaTimeout


@dataclass(frozen=True)
class TopicSpec:
    role: str  # attribute name on Topics
    suffix: str
    key: str
    record: Any
    schema_name: str
    public: bool  # a result topic other systems consume (its schema is exported)
    doc: str


SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "orders",
        "orders",
        "tenant:order_id",
        Order,
        "order.v1",
        True,
        "Canonical orders, input of the reservation saga.",
    ),
    TopicSpec(
        "inventory_commands",
        "inventory-commands",
        "tenant:sku",
        InventoryCommand,
        "inventory-command.v1",
        True,
        "Every stock change: reserve, release, issue, receive, adjust, return. One writer per SKU.",
    ),
    TopicSpec(
        "line_results",
        "line-results",
        "tenant:order_id",
        LineResult,
        "line-result.v1",
        True,
        "The inventory agent's answer to each reserve command.",
    ),
    TopicSpec(
        "saga_timeouts",
        "saga-timeouts",
        "tenant:order_id",
        SagaTimeout,
        "saga-timeout.v1",
        False,
        "Internal: deadline ticks from the coordinator's timer to itself.",
    ),
    TopicSpec(
        "order_decisions",
        "order-decisions",
        "tenant:order_id",
        OrderDecision,
        "order-decision.v1",
        True,
        "One terminal decision per order: accepted or rejected, with the reserved warehouse per line.",
    ),
    TopicSpec(
        "stock_events",
        "stock-events",
        "tenant:sku",
        StockEvent,
        "stock-event.v1",
        True,
        "Every applied stock change with the state after it (gap-free version per SKU).",
    ),
    TopicSpec(
        "dead_letters",
        "dead-letters",
        "original key",
        DeadLetter,
        "dead-letter.v1",
        True,
        "Bad input: reason code, source topic/partition/offset, original bytes.",
    ),
)


class Topics:
    """Topic names under one prefix (a deployment, or one test run)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        for spec in SPECS:
            setattr(self, spec.role, f"{prefix}.{spec.suffix}")

    # declared for type checkers; set in __init__
    orders: str
    inventory_commands: str
    line_results: str
    saga_timeouts: str
    order_decisions: str
    stock_events: str
    dead_letters: str

    def all(self) -> list[str]:
        return [getattr(self, spec.role) for spec in SPECS]

    def name(self, spec: TopicSpec) -> str:
        return getattr(self, spec.role)
