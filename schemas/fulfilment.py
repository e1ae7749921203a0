"""Fulfilment records (履约): a tenant's warehouse layout and policies, and what allocation, merging and wave
picking produce from accepted orders.

The layout is configuration that arrives as a versioned record in the log (key ``tenant``), so a stage applies
it at the same point of its input on every replay. Everything else here is an output keyed by the tenant.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.common import EpochMs, Ident, Key, Quantity, Record, Tenant, Text
from schemas.order import Address

Centimetres = Annotated[int, Meta(ge=0, le=1_000_000, description="A distance in whole centimetres")]
Count = Annotated[int, Meta(ge=1, le=100_000)]
#: "province" or "province/city", as in the receiver address (e.g. "浙江省" or "浙江省/杭州市").
RegionName = Annotated[str, Meta(min_length=1, max_length=120)]

AllocationStrategy = Literal["region", "fewest-parcels", "stock-first", "ship-from-store"]
WaveGrouping = Literal["carrier", "shape", "zone"]
PathStrategy = Literal["s-shape", "largest-gap", "combined", "optimal"]
DEFAULT_MERGE_WINDOW_S = 600
ShortPickPolicy = Literal["reallocate", "partial"]


class ZoneSpec(Record, kw_only=True):
    """A single-block picking zone (库区): parallel aisles between a front and a back cross aisle."""

    zone: Ident
    aisles: Annotated[int, Meta(ge=1, le=500)]
    pitch_cm: Annotated[int, Meta(ge=1, le=10_000)]  # centre to centre of neighbouring aisles
    length_cm: Annotated[int, Meta(ge=1, le=100_000)]
    depot_cm: Centimetres = 0  # where on the front cross aisle picking starts and ends


class BinSpec(Record, kw_only=True):
    """A bin location (库位) holding one SKU: zone, aisle, bay and level, and its depth along the aisle."""

    bin: Ident
    sku: Ident
    zone: Ident
    aisle: Annotated[int, Meta(ge=1, le=500)]
    bay: Annotated[int, Meta(ge=1, le=10_000)]
    level: Annotated[int, Meta(ge=1, le=50)] = 1
    depth_cm: Centimetres


class CarrierSpec(Record, kw_only=True):
    carrier: Ident
    #: Last collection of the day, minutes after midnight (tenant time, UTC+8): waves for it are released first.
    cutoff_minute: Annotated[int, Meta(ge=0, le=1439)] = 1080


class WarehouseSpec(Record, kw_only=True):
    """A warehouse or a store that ships (门店发货) — both are stock locations with bins."""

    warehouse: Ident
    kind: Literal["warehouse", "store"] = "warehouse"
    regions: list[RegionName] = msgspec.field(default_factory=list)  # whom it serves; empty = nobody by region
    carriers: list[Ident] = msgspec.field(default_factory=list)  # first = default
    zones: list[ZoneSpec] = msgspec.field(default_factory=list)
    bins: list[BinSpec] = msgspec.field(default_factory=list)
    cart_units: Count = 40  # units one picking cart holds: a pick list never exceeds it


class AllocationPolicy(Record, kw_only=True):
    """分仓: which warehouses serve an order, and when it is split (拆单)."""

    strategy: AllocationStrategy = "fewest-parcels"
    #: Fallback and tie-break order of warehouses (stock-first takes the first that can ship everything).
    warehouse_order: list[Ident] = msgspec.field(default_factory=list)
    #: Per-shop override: these warehouses only, in this order (例外店铺).
    shop_warehouses: dict[str, list[Ident]] = msgspec.field(default_factory=dict)
    #: SKUs that always ship in a parcel of their own (oversize, fragile).
    ship_alone_skus: list[Ident] = msgspec.field(default_factory=list)


class WavePolicy(Record, kw_only=True):
    """波次: how shipments are grouped, when a wave is released, and how its pick lists are walked."""

    group_by: list[WaveGrouping] = msgspec.field(default_factory=lambda: ["carrier", "shape"])
    max_shipments: Count = 200
    max_lines: Count = 400
    max_units: Count = 800
    release_count: Count = 50  # 单量触发: a group this large is released at once
    release_after_s: Annotated[int, Meta(ge=1, le=86_400)] = 300  # 定时触发: the oldest waits no longer
    path: PathStrategy = "optimal"


class Layout(Record, kw_only=True):
    """A tenant's fulfilment configuration. A higher ``version`` replaces a lower one; an equal or lower one is
    ignored (a redelivery or a stale file)."""

    tenant: Tenant
    version: Annotated[int, Meta(ge=1)]
    warehouses: list[WarehouseSpec]
    carriers: list[CarrierSpec] = msgspec.field(default_factory=list)
    allocation: AllocationPolicy = msgspec.field(default_factory=AllocationPolicy)
    waves: WavePolicy = msgspec.field(default_factory=WavePolicy)
    merge_window_s: Annotated[int, Meta(ge=0, le=7 * 86_400)] = (
        DEFAULT_MERGE_WINDOW_S  # 合单: how long an order waits for others
    )
    short_pick: ShortPickPolicy = "reallocate"

    @property
    def key(self) -> str:
        return keys.tenant(self.tenant)


# -- outputs ------------------------------------------------------------------------------------------------
class AllocatedParcel(Record, kw_only=True):
    warehouse: Ident
    line_ids: list[Ident]


class OrderAllocation(Record, kw_only=True):
    """分仓 of an accepted order: which warehouse ships which of its lines, and how that was chosen — ``strategy``
    (``fullest`` when the tenant has no layout: each line where the most units are), whether the SKUs' stock was
    ``quoted`` first, and the ``ranking`` of the warehouses that could serve it. More than one parcel is a split
    (拆单). Key: ``tenant:order_id``."""

    schema_version: int = 1
    tenant: Tenant
    order_id: Ident
    strategy: Literal["region", "fewest-parcels", "stock-first", "fullest"]
    quoted: bool = False
    ranking: list[Ident] = msgspec.field(default_factory=list)
    parcels: list[AllocatedParcel]
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class ShipmentLine(Record, kw_only=True):
    order_id: Ident
    line_id: Ident
    sku: Ident
    quantity: Quantity


class Shipment(Record, kw_only=True):
    """One parcel to pick and ship from one warehouse (包裹): lines of one order (a split yields several), or of
    several orders of the same buyer and address (a merge)."""

    schema_version: int = 1
    shipment_id: Ident
    tenant: Tenant
    shop_id: Ident
    warehouse: Ident
    carrier: Ident
    lines: list[ShipmentLine]
    order_ids: list[Ident]
    split_reason: str | None = None  # why an order has more than one shipment
    #: The order side's inbox key of its orders (one buyer: merges never cross buyers): where fulfilment
    #: reports a short pick of one of its lines.
    reply_to: Key | None = None
    receiver: Address | None = None
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.shipment(self.tenant, self.shipment_id)


class PickStop(Record, kw_only=True):
    bin: Ident
    sku: Ident
    quantity: Quantity
    aisle: int
    depth_cm: Centimetres
    shipment_id: Ident
    line_id: Ident


class PickList(Record, kw_only=True):
    """One picker's walk with one cart through one zone (拣货单), stops in walking order."""

    schema_version: int = 1
    pick_list_id: Ident
    wave_id: Ident
    tenant: Tenant
    warehouse: Ident
    zone: Ident
    stops: list[PickStop]
    path: PathStrategy
    length_cm: Centimetres
    s_shape_cm: Centimetres  # the same stops walked S-shape: the baseline the path is compared with
    exact: bool = False  # the length is proven the shortest for these stops

    @property
    def key(self) -> str:
        return keys.pick_list(self.tenant, self.pick_list_id)


class Wave(Record, kw_only=True):
    schema_version: int = 1
    wave_id: Ident
    tenant: Tenant
    warehouse: Ident
    group: str  # the grouping values, e.g. "carrier=sf,shape=single"
    trigger: Literal["count", "time", "flush"]
    shipment_ids: list[Ident]
    pick_list_ids: list[Ident]
    lines: int
    units: int
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.wave(self.tenant, self.wave_id)


class PickedLine(Record, kw_only=True):
    shipment_id: Ident
    line_id: Ident
    bin: Ident
    picked: Annotated[int, Meta(ge=0, le=10_000)]


class PickedStop(Record, kw_only=True):
    shipment_id: Ident
    line_id: Ident
    sku: Ident
    asked: Quantity
    picked: Annotated[int, Meta(ge=0, le=10_000)]

    @property
    def missing(self) -> int:
        return self.asked - self.picked


class PickOutcome(Record, kw_only=True):
    """What the fulfilment stage made of a pick confirmation: ``confirmed`` (with what was picked and what is
    short, per stop) or ``refused`` (nothing applied; ``errors`` say why, and the confirmation is dead-lettered)."""

    schema_version: int = 1
    tenant: Tenant
    warehouse: Ident
    pick_list_id: Ident
    status: Literal["confirmed", "refused"]
    stops: list[PickedStop] = msgspec.field(default_factory=list)
    errors: list[Text] = msgspec.field(default_factory=list)
    picker: Ident = "unknown"
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.pick_list(self.tenant, self.pick_list_id)

    @property
    def shorts(self) -> list[PickedStop]:
        return [s for s in self.stops if s.picked < s.asked]


class PickedShipmentLine(Record, kw_only=True):
    order_id: Ident
    line_id: Ident
    sku: Ident
    asked: Quantity
    picked: Annotated[int, Meta(ge=0, le=10_000)]


class ShipmentPicked(Record, tag="picked", tag_field="kind", kw_only=True):
    """Every pick list a shipment is on was confirmed (拣货完成): what is in the carts for packing, per line — fewer
    units than asked after a short pick, none for a line picked 0 (its units are re-allocated or shipped partial,
    see ``short-picks``). Key: ``tenant:shipment_id``."""

    schema_version: int = 1
    tenant: Tenant
    shipment_id: Ident
    warehouse: Ident
    carrier: Ident
    order_ids: list[Ident]
    lines: list[PickedShipmentLine]
    pick_list_ids: list[Ident]
    shop_id: Ident | None = None
    receiver: Address | None = None  # one per shipment: only orders to the same receiver merge
    carriers: list[Ident] = msgspec.field(default_factory=list)  # the warehouse's carriers (layout), default first
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.shipment(self.tenant, self.shipment_id)


class ShortPickOutcome(Record, kw_only=True):
    """How the order side resolved a short pick of one line (缺货处理): the missing units were ``reallocated`` to
    another warehouse (a new line ``remainder_line_id`` ships from ``remainder_warehouse``), or the line ships
    ``partial`` — by the tenant's policy, or because no other warehouse had them. Key: ``tenant:order_id``."""

    schema_version: int = 1
    tenant: Tenant
    order_id: Ident
    line_id: Ident
    sku: Ident
    warehouse: Ident  # where the pick came up short
    missing: Quantity
    outcome: Literal["reallocated", "partial"]
    reason: Literal["policy", "reallocated", "no_stock", "cancelled"]
    remainder_line_id: Ident | None = None
    remainder_warehouse: Ident | None = None
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


# -- the fulfilment inbox (key tenant:warehouse) ------------------------------------------------------------
class LayoutVersion(Record, tag="layout", tag_field="kind", kw_only=True):
    """A tenant's layout, one copy per partition of each inbox that uses it (the order inbox, for allocation;
    the fulfilment inbox, for merging and waves): each partition sees each version at one point of its log."""

    v: int = 1
    layout: Layout

    @property
    def key(self) -> str:
        return keys.tenant(self.layout.tenant)


class ParcelAccepted(Record, tag="parcel", tag_field="kind", kw_only=True):
    """The lines of an accepted order reserved in one warehouse (an order split over warehouses sends one per
    warehouse). ``merge_key`` is tenant, shop, buyer and a digest of the receiver: what must match to merge.
    A short-picked line re-reserved elsewhere comes as a parcel of its own with ``reallocated`` set."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    shop_id: Ident
    warehouse: Ident
    merge_key: Annotated[str, Meta(min_length=1, max_length=400)]
    receiver: Address | None = None  # the same for every order of a merge key
    lines: Annotated[list[ShipmentLine], Meta(min_length=1)]
    reply_to: Key | None = None  # the order's inbox key (short picks are reported there)
    reallocated: bool = False
    ts: EpochMs  # when the order was accepted (or the line re-reserved)

    @property
    def key(self) -> str:
        return keys.warehouse(self.tenant, self.warehouse)


class OrderWithdrawn(Record, tag="withdrawn", tag_field="kind", kw_only=True):
    """An accepted order was cancelled: it leaves any shipment still waiting to be merged. One per warehouse."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    warehouse: Ident
    merge_key: Annotated[str, Meta(min_length=1, max_length=400)]
    line_ids: list[Ident] = msgspec.field(default_factory=list)  # some lines only (refunded); empty: the order
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.warehouse(self.tenant, self.warehouse)


class Tick(Record, tag="tick", tag_field="kind", kw_only=True):
    """The passage of time, as a record: merge windows and wave timers move on record time only, so a partition
    with no orders still releases what waits. Written by the partition's owner; the record's time is the time."""

    v: int = 1
    ts: EpochMs


class PickConfirmation(Record, tag="pick", tag_field="kind", kw_only=True):
    """A picker's report for one pick list (拣货确认): what was actually picked, per stop. Fewer units than asked
    is a short pick (缺货). Sent to the fulfilment inbox (key ``tenant:warehouse``) by scanners or the HTTP API."""

    v: int = 1
    tenant: Tenant
    warehouse: Ident
    pick_list_id: Ident
    lines: Annotated[list[PickedLine], Meta(min_length=1, max_length=2_000)]
    picker: Ident = "unknown"
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.warehouse(self.tenant, self.warehouse)


FulfilmentRecord = LayoutVersion | ParcelAccepted | OrderWithdrawn | Tick | PickConfirmation


class LineShort(Record, tag="line_short", tag_field="kind", kw_only=True):
    """Fulfilment to the order side (its inbox, key ``reply_to``): ``missing`` units of a line were not in their
    bin. The stock side has already taken them out of the reservation and the count; the order side decides
    whether they are re-reserved elsewhere or the line ships partial (the layout's ``short_pick``)."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    line_id: Ident
    sku: Ident
    warehouse: Ident
    missing: Quantity
    picked: Annotated[int, Meta(ge=0, le=10_000)]
    pick_list_id: Ident
    reply_to: Key
    ts: EpochMs

    @property
    def key(self) -> str:
        return self.reply_to


class WithdrawalOutcome(Record, kw_only=True):
    """What became of a cancelled order in fulfilment: ``left`` its waiting shipment, or ``too_late`` — its
    shipment was already released to a wave and has to be intercepted (拦截)."""

    schema_version: int = 1
    tenant: Tenant
    order_id: Ident
    warehouse: Ident
    outcome: Literal["left", "too_late", "unknown"]
    shipment_ids: list[Ident] = msgspec.field(default_factory=list)
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)
