"""The order side's inbox: every record that can change an order reaches its stage on one topic, keyed by the
order's buyer key (``tenant:shop:b-<buyer>``), so one writer sees them in one reproducible order (I7).

* ``order``       a channel snapshot of an order (new, updated, paid, cancelled, refunded …), from ingest and
                  the HTTP API;
* ``operator``    an operator's release or reject of a held order, from the API;
* ``line_result`` the inventory's answer to a reserve (schemas.saga.LineResult);
* ``rules``       a tenant's review rule set, published to every partition so that each partition sees each
                  version at one point of its log;
* ``layout``      a tenant's warehouse layout (schemas.fulfilment.LayoutVersion), published the same way: it
                  ranks the warehouses a line may be reserved in (分仓);
* ``line_short``  fulfilment's report that a line was short-picked (schemas.fulfilment.LineShort);
* ``stock_quote`` a SKU writer's availability per warehouse, for allocating an order (schemas.saga.StockQuote).
"""

from __future__ import annotations

from schemas import keys
from schemas.common import EpochMs, Ident, Key, Record, Tenant, Text
from schemas.fulfilment import LayoutVersion, LineShort
from schemas.order import Order
from schemas.review import OperatorActionKind, RuleSet
from schemas.saga import LineResult, StockQuote


class OrderSnapshot(Record, tag="order", tag_field="kind", kw_only=True):
    v: int = 1
    order: Order

    @property
    def key(self) -> str:
        return keys.buyer_key(self.order)


class OperatorAction(Record, tag="operator", tag_field="kind", kw_only=True):
    """An operator's action on a held order. ``inbox_key`` is the order's buyer key (from the holds list)."""

    v: int = 1
    action_id: Ident
    tenant: Tenant
    order_id: Ident
    inbox_key: Key
    action: OperatorActionKind
    actor: Ident
    note: Text = ""
    ts: EpochMs

    @property
    def key(self) -> str:
        return self.inbox_key


class RulesVersion(Record, tag="rules", tag_field="kind", kw_only=True):
    """A tenant's review rules, one copy per inbox partition. Key: the tenant."""

    v: int = 1
    rules: RuleSet

    @property
    def key(self) -> str:
        return keys.tenant(self.rules.tenant)


InboxRecord = OrderSnapshot | OperatorAction | LineResult | RulesVersion | LayoutVersion | LineShort | StockQuote
