"""Topic names, keys and the record on each: the pipeline's public contract (README "Topics").

Every topic has the same partition count so that co-keyed topics are co-partitioned, and every key
starts with the tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.deadletter import DeadLetter
from schemas.inventory import InventoryCommand, StockEvent
from schemas.order import Channel, Order
from schemas.review import OrderCancellation, ReviewCommand, ReviewDecision, RuleSet, SagaRequest
from schemas.saga import LineResult, OrderDecision, SagaTimeout


@dataclass(frozen=True)
class TopicSpec:
    role: str  # attribute name on Topics
    suffix: str
    key: str
    record: Any  # None: the channel's own payload
    schema_name: str
    public: bool  # a result topic other systems consume (its schema is exported)
    doc: str
    config: dict[str, str] = field(default_factory=dict)


def _spec(
    role: str, suffix: str, key: str, record: Any, schema: str, public: bool, doc: str, **config: str
) -> TopicSpec:
    return TopicSpec(
        role, suffix, key, record, schema, public, doc, {k.replace("_", "."): v for k, v in config.items()}
    )


SPECS: tuple[TopicSpec, ...] = (
    _spec(
        "orders",
        "orders",
        "tenant:order_id",
        Order,
        "order.v1",
        True,
        "Canonical orders (every channel snapshot, deduplicated later by version), input of review.",
    ),
    _spec(
        "review_commands",
        "review-commands",
        "tenant:order_id",
        ReviewCommand,
        "review-command.v1",
        False,
        "Operators' release / reject of held orders (from the API).",
    ),
    _spec(
        "review_rules",
        "review-rules",
        "tenant",
        RuleSet,
        "rule-set.v1",
        True,
        "Review rules per tenant; compacted; every worker reads all of it.",
        cleanup_policy="compact",
    ),
    _spec(
        "review_decisions",
        "review-decisions",
        "tenant:order_id",
        ReviewDecision,
        "review-decision.v1",
        True,
        "What review decided (approved, held, rejected, released, cancelled) and which rules fired.",
    ),
    _spec(
        "saga_requests",
        "saga-requests",
        "tenant:order_id",
        SagaRequest,
        "saga-request.v1",
        False,
        "Review → coordinator: start the reservation saga of an approved order, or cancel (some of) it.",
    ),
    _spec(
        "inventory_commands",
        "inventory-commands",
        "tenant:sku",
        InventoryCommand,
        "inventory-command.v1",
        True,
        "Every stock change: reserve, release, issue, receive, adjust, return. One writer per SKU.",
    ),
    _spec(
        "line_results",
        "line-results",
        "tenant:order_id",
        LineResult,
        "line-result.v1",
        True,
        "The inventory agent's answer to each reserve command.",
    ),
    _spec(
        "saga_timeouts",
        "saga-timeouts",
        "tenant:order_id",
        SagaTimeout,
        "saga-timeout.v1",
        False,
        "Internal: deadline ticks from the coordinator's timer to itself.",
    ),
    _spec(
        "order_decisions",
        "order-decisions",
        "tenant:order_id",
        OrderDecision,
        "order-decision.v1",
        True,
        "One terminal decision per order: accepted, rejected (stock, timeout, review) or cancelled.",
    ),
    _spec(
        "order_cancellations",
        "order-cancellations",
        "tenant:order_id",
        OrderCancellation,
        "order-cancellation.v1",
        True,
        "Cancellations before shipment (with the reservations released) and return requests after.",
    ),
    _spec(
        "stock_events",
        "stock-events",
        "tenant:sku",
        StockEvent,
        "stock-event.v1",
        True,
        "Every applied stock change with the state after it (gap-free version per SKU).",
    ),
    _spec(
        "dead_letters",
        "dead-letters",
        "original key",
        DeadLetter,
        "dead-letter.v1",
        True,
        "Bad input: reason code, source topic/partition/offset, original bytes.",
    ),
)

RAW_KEY = "tenant:shop_id:platform_order_id"


class Topics:
    """Topic names under one prefix (a deployment, or one test run)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        for spec in SPECS:
            setattr(self, spec.role, f"{prefix}.{spec.suffix}")
        #: raw channel payloads, one topic per channel, consumed by the same adapters as the HTTP API
        self.raw: dict[Channel, str] = {ch: f"{prefix}.raw.{ch.value}" for ch in Channel}

    # declared for type checkers; set in __init__
    orders: str
    review_commands: str
    review_rules: str
    review_decisions: str
    saga_requests: str
    inventory_commands: str
    line_results: str
    saga_timeouts: str
    order_decisions: str
    order_cancellations: str
    stock_events: str
    dead_letters: str

    def all(self) -> list[str]:
        return [getattr(self, spec.role) for spec in SPECS] + list(self.raw.values())

    def name(self, spec: TopicSpec) -> str:
        return getattr(self, spec.role)

    def configs(self) -> dict[str, dict[str, str]]:
        return {getattr(self, s.role): s.config for s in SPECS if s.config}

    def channel_of(self, raw_topic: str) -> Channel | None:
        for channel, name in self.raw.items():
            if name == raw_topic:
                return channel
        return None
