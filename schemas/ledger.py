"""Finance (业财一体化): the ledger stage's inbox, its policy, and the vouchers, reconciliation results and trial
balance it publishes. Money is integer fen; every voucher balances (Σ debit = Σ credit).

The ledger books business events as they happen: receipts, adjustments and short picks (from the inventory,
with their value at moving-average cost), goods issued (revenue at shipment, or 发出商品 until delivery), outbound
freight (from shipped parcels), returns (revenue reversal and the goods back at the cost they left with) and
platform settlements (commission, payout). Each voucher's id is derived from its source event and its kind, so
a replay or a redelivery books nothing twice.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.aftersales import OrderOpened, OrderProgress, ReturnSettled
from schemas.common import EpochMs, Ident, Record, Tenant, Text
from schemas.inventory import StockEvent
from schemas.order import Channel
from schemas.shipping import GoodsIssued, ShipmentShipped

#: Amounts on voucher lines (a day's summary of a big tenant can exceed one order's cap).
Amount = Annotated[int, Meta(ge=0, le=10**15, description="Money in integer fen (分), not negative")]
SignedAmount = Annotated[int, Meta(ge=-(10**15), le=10**15, description="Money in integer fen (分)")]
RateBp = Annotated[int, Meta(ge=0, le=10_000, description="A rate in basis points: 13 % is 1300")]
AccountCode = Annotated[str, Meta(pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$", description="Account code")]
BookDate = Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}$", description="Accounting date (China time)")]


class AccountRole(enum.StrEnum):
    """What an account is for, independent of the tenant's chart (its codes and names are configurable)."""

    BANK = "bank"  # 银行存款
    WALLET = "wallet"  # 其他货币资金—平台账户 (Alipay, JD wallet, Douyin account)
    RECEIVABLE = "receivable"  # 应收账款—平台
    INVENTORY = "inventory"  # 库存商品
    GOODS_SHIPPED = "goods_shipped"  # 发出商品 (shipped, revenue not yet recognised)
    PENDING_LOSS = "pending_loss"  # 待处理财产损溢
    PAYABLE = "payable"  # 应付账款 (suppliers, carriers)
    INPUT_VAT = "input_vat"  # 应交税费—应交增值税（进项税额）
    OUTPUT_VAT = "output_vat"  # 应交税费—应交增值税（销项税额）
    REVENUE = "revenue"  # 主营业务收入
    COST = "cost"  # 主营业务成本
    COMMISSION = "commission"  # 销售费用—平台佣金
    FREIGHT = "freight"  # 销售费用—运杂费 (or 主营业务成本—运费: map it to a 6401 code)
    ADMIN_EXPENSE = "admin_expense"  # 管理费用 (normal stock losses)


class Account(Record, kw_only=True):
    code: AccountCode
    name: Annotated[str, Meta(min_length=1, max_length=80)]


class Recognition(enum.StrEnum):
    """When revenue is recognised: when the goods leave, or when the buyer signs for them (control transfers)."""

    SHIPMENT = "shipment"
    DELIVERY = "delivery"


class LedgerPolicy(Record, kw_only=True):
    """A tenant's books: its chart (overrides of the standard one, by role), VAT rates and revenue recognition."""

    accounts: dict[AccountRole, Account] = msgspec.field(default_factory=dict)
    output_vat_bp: RateBp = 1300  # goods sold: 13 %
    input_vat_bp: RateBp = 1300  # goods bought: 13 % (0 for a small-scale taxpayer's supplier)
    freight_vat_bp: RateBp = 900  # transport: 9 %
    commission_vat_bp: RateBp = 0  # 6 % with a special invoice from the platform; 0: the fee is all expense
    recognition: Recognition = Recognition.SHIPMENT


class LedgerPolicyVersion(Record, tag="ledger_policy", tag_field="kind", kw_only=True):
    """A tenant's ledger policy, one copy per partition of the ledger inbox (key: the tenant)."""

    v: int = 1
    tenant: Tenant
    version: Annotated[int, Meta(ge=0)]
    policy: LedgerPolicy

    @property
    def key(self) -> str:
        return keys.tenant(self.tenant)


# -- the ledger inbox ---------------------------------------------------------------------------------------
# Public records of other stages arrive wrapped when they carry no ``kind`` tag of their own.


class StockMoved(Record, tag="stock_moved", tag_field="kind", kw_only=True):
    """A stock event that changed on hand (receipt, issue, return, adjustment, short pick), with its value. From
    the inventory; key ``tenant:order_id`` for an order's units, else ``tenant:sku``."""

    v: int = 1
    event: StockEvent

    @property
    def tenant(self) -> str:
        return self.event.tenant

    @property
    def key(self) -> str:
        return keys.stock_moved(self.event)


class ParcelsShipped(Record, tag="parcels_shipped", tag_field="kind", kw_only=True):
    """A shipment's parcels left (outbound freight). Key ``tenant:shipment_id``."""

    v: int = 1
    shipped: ShipmentShipped

    @property
    def tenant(self) -> str:
        return self.shipped.tenant

    @property
    def key(self) -> str:
        return self.shipped.key


class ProgressMade(Record, tag="progress", tag_field="kind", kw_only=True):
    """An order's progress (delivered recognises revenue under the delivery policy). Key ``tenant:order_id``."""

    v: int = 1
    progress: OrderProgress

    @property
    def tenant(self) -> str:
        return self.progress.tenant

    @property
    def key(self) -> str:
        return self.progress.key


class ReturnBooked(Record, tag="return_settled", tag_field="kind", kw_only=True):
    """A received return and its refund. Key ``tenant:order_id``."""

    v: int = 1
    settled: ReturnSettled

    @property
    def tenant(self) -> str:
        return self.settled.tenant

    @property
    def key(self) -> str:
        return self.settled.key


class SettlementLine(Record, tag="settlement_line", tag_field="kind", kw_only=True):
    """One line of a platform settlement file (对账单): what the platform paid out for one order. Key
    ``tenant:order_id``. ``line_id`` is ``<batch>.<row>``."""

    v: int = 1
    line_id: Ident
    batch_id: Ident
    tenant: Tenant
    channel: Channel
    order_id: Ident
    platform_order_id: Annotated[str, Meta(min_length=1, max_length=128)]
    gross_fen: SignedAmount  # what the buyer paid for the order (negative: a refund settled)
    commission_fen: SignedAmount  # commission and service fees the platform kept
    net_fen: SignedAmount  # paid out to the tenant's wallet: gross − commission
    ts: EpochMs  # settlement time

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


#: What the ledger stage reads (``ledger-inbox``). OrderOpened and GoodsIssued carry their own tags.
LedgerRecord = (
    OrderOpened
    | GoodsIssued
    | StockMoved
    | ParcelsShipped
    | ProgressMade
    | ReturnBooked
    | SettlementLine
    | LedgerPolicyVersion
)


# -- what the ledger publishes ------------------------------------------------------------------------------


class VoucherKind(enum.StrEnum):
    RECEIPT = "receipt"  # 采购入库: Dr inventory + input VAT / Cr payable
    REVENUE = "revenue"  # 销售收入: Dr receivable / Cr revenue + output VAT
    COST = "cost"  # 销售成本: Dr cost (or goods shipped) / Cr inventory
    DELIVERED_COST = "delivered_cost"  # 发出商品转成本 at delivery: Dr cost / Cr goods shipped
    FREIGHT = "freight"  # 运费: Dr freight + input VAT / Cr payable—carrier
    RETURN_REVENUE = "return_revenue"  # 销售退回: Dr revenue + output VAT / Cr receivable
    RETURN_COST = "return_cost"  # 退货入库: Dr inventory / Cr cost (or goods shipped), at the cost they left with
    STOCK_LOSS = "stock_loss"  # 盘亏/拣货缺货: Dr pending loss / Cr inventory
    STOCK_GAIN = "stock_gain"  # 盘盈: Dr inventory / Cr pending loss
    LOSS_SETTLED = "loss_settled"  # 损溢转销: Dr admin expense / Cr pending loss (or the reverse for a gain)
    COMMISSION = "commission"  # 平台佣金: Dr commission (+ input VAT) / Cr receivable
    PAYOUT = "payout"  # 平台回款: Dr wallet / Cr receivable


class VoucherLine(Record, kw_only=True):
    account: AccountCode
    name: Annotated[str, Meta(max_length=80)]
    debit_fen: Amount = 0
    credit_fen: Amount = 0
    sub: Annotated[str, Meta(max_length=160)] = ""  # 辅助核算: channel, warehouse, carrier, SKU


class Voucher(Record, kw_only=True):
    """One balanced accounting voucher (记账凭证). ``voucher_id`` = ``<kind>.<tenant>.<source_id>``: one per
    source event and kind. Key: ``tenant:<entity>`` (the order, SKU or shipment it books)."""

    schema_version: int = 1
    voucher_id: Ident
    tenant: Tenant
    kind: VoucherKind
    source_id: Ident  # the business event booked (a stock event, goods issue, return, settlement line …)
    entity: Ident  # order id, SKU or shipment id: the key's second part
    order_id: Ident | None = None
    channel: Channel | None = None
    book_date: BookDate
    policy_version: int = 0
    lines: Annotated[list[VoucherLine], Meta(min_length=2)]
    ts: EpochMs  # the source event's time

    @property
    def key(self) -> str:
        return keys.voucher(self.tenant, self.entity)

    @property
    def debit_fen(self) -> int:
        return sum(line.debit_fen for line in self.lines)

    @property
    def credit_fen(self) -> int:
        return sum(line.credit_fen for line in self.lines)


def voucher_id(kind: VoucherKind, tenant: str, source_id: str) -> str:
    return f"{kind.value}.{tenant}.{source_id}"


class ReconStatus(enum.StrEnum):
    MATCHED = "matched"  # the file's gross equals the order's open receivable: commission and payout booked
    AMOUNT_MISMATCH = "amount_mismatch"  # the order is in the books with another receivable: nothing booked
    MISSING_IN_BOOKS = "missing_in_books"  # the file pays an order the books have no receivable for
    MISSING_IN_FILE = "missing_in_file"  # the books expect a payout the file does not have
    DUPLICATE = "duplicate"  # the order was settled already (by an earlier line or file)


class Reconciliation(Record, kw_only=True):
    """The result of matching one settlement line (or one open receivable) against the books. Key
    ``tenant:order_id``."""

    schema_version: int = 1
    result_id: Ident  # recon.<tenant>.<batch>.<order>
    batch_id: Ident
    tenant: Tenant
    order_id: Ident
    platform_order_id: str = ""
    channel: Channel | None = None
    status: ReconStatus
    file_gross_fen: SignedAmount | None = None
    book_receivable_fen: SignedAmount | None = None
    commission_fen: SignedAmount = 0
    net_fen: SignedAmount = 0
    detail: Text = ""
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class AccountBalance(msgspec.Struct, array_like=True):
    debit_fen: int
    credit_fen: int


class TrialBalance(msgspec.Struct, kw_only=True):
    """One partition's share of a tenant's trial balance (试算平衡表), per account code: Σ debits and Σ credits
    posted. A tenant's trial balance is the sum over the partitions."""

    tenant: Tenant
    accounts: dict[str, AccountBalance] = msgspec.field(default_factory=dict)
    names: dict[str, str] = msgspec.field(default_factory=dict)
    vouchers: int = 0


def check_balanced(voucher: Voucher) -> str | None:
    """Why a voucher does not balance (or has a line with both sides or neither), or None."""
    for line in voucher.lines:
        if (line.debit_fen == 0) == (line.credit_fen == 0) and not (line.debit_fen == line.credit_fen == 0):
            return f"{voucher.voucher_id}: line {line.account} has both a debit and a credit"
    if voucher.debit_fen != voucher.credit_fen:
        return f"{voucher.voucher_id}: debits {voucher.debit_fen} != credits {voucher.credit_fen}"
    return None
