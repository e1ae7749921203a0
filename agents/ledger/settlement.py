"""Platform settlement files (对账单) and payout reconciliation (对账), pure: bytes in, ``SettlementLine`` records
and results out. No I/O here; ``oms settle`` (agents.ledger.reconcile) reads the file and talks to Kafka.

The file format — an Alipay-style settlement CSV (支付宝账务明细 style):

* **Encoding**: UTF-8, with or without a BOM; when the bytes are not UTF-8 they are read as GB18030 (a superset
  of GBK, which is what Alipay exports are usually in).
* **Comments**: a whole line whose first non-blank character is ``#`` is skipped (Alipay puts a preamble —
  account, period — and the totals in such lines). Blank lines are skipped too.
* **Header**: the first other line, required. Names are matched ignoring case, surrounding blanks (Alipay pads
  cells with tabs) and full- or half-width brackets; Chinese or English names:

  =================  ==========================================  ===========================================
  field              accepted header names                       value
  =================  ==========================================  ===========================================
  order id           ``order_id``, ``商户订单号``                  the platform's order id (required)
  gross              ``gross``, ``收入金额（+元）``, ``订单金额``       yuan: what the buyer paid (required)
  commission         ``commission``, ``服务费（元）``                 yuan: fees the platform kept (required)
  net                ``net``, ``实收金额``                           yuan: paid out, gross − commission (required)
  settled at         ``settled_at``, ``入账时间``                     ``YYYY-MM-DD HH:MM:SS``, China time (UTC+8)
  shop               ``shop_id``                                  the shop; overrides ``--shop`` for the row
  =================  ==========================================  ===========================================

  Other columns are ignored. A required column missing, or one field named twice, is a file-level error
  (:class:`SettlementFileError`): nothing of the file is used.
* **Amounts** are yuan with at most 2 decimals, parsed to integer fen exactly (strings, never floats): ``129``,
  ``129.0`` and ``129.00`` are 12900, ``0.1`` is 10. An optional sign (``-12.35`` settles a refund), and ``,``
  thousands separators in groups of three (``1,234.50`` is 123450 — the cell is quoted in the CSV) are
  accepted; anything else (3 decimals, ``1,23``, ``¥``, blanks inside, ``1e3``) is a row error. An empty
  commission cell is 0; an empty gross or net is an error. The commission is what the platform *kept*, written
  positive; each row must satisfy ``net == gross − commission``.
* **Rows**: a bad row is a :class:`RowError` (its line number in the file, a reason code, a message) and the
  other rows still parse. The same order twice in one file: the second (and later) rows are ``duplicate_row``.

Example (``shop_id`` optional, ``--shop`` otherwise)::

    # 支付宝账务明细查询
    商户订单号,收入金额（+元）,服务费（元）,实收金额,入账时间
    T1001,129.00,6.45,122.55,2024-05-01 10:00:00
    T1002,"1,234.50",61.73,1172.77,2024-05-01 10:05:00

Each good row becomes a ``SettlementLine`` for our order ``order_id(channel, shop, platform order id)``, with
line id ``<batch>.<row>`` (``row``: the line number in the file, 1-based, comments counted), key
``tenant:order_id``. The ledger stage answers each with a ``Reconciliation``; an order the books expect a payout
for and the file does not mention is :func:`missing_in_file`, which only the whole file can tell.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.common import Ident, Tenant
from schemas.ledger import Reconciliation, ReconStatus, SettlementLine, Voucher
from schemas.order import Channel, order_id

CHINA = dt.timezone(dt.timedelta(hours=8))
MAX_AMOUNT_FEN = 10**15  # schemas.ledger.SignedAmount
_IDENT = re.compile(Ident.__metadata__[0].pattern)
_TENANT = re.compile(Tenant.__metadata__[0].pattern)
_AMOUNT = re.compile(r"^([+-]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")

#: field -> accepted header names (normalised: see ``_norm``).
COLUMNS: dict[str, tuple[str, ...]] = {
    "order_id": ("order_id", "商户订单号"),
    "gross": ("gross", "收入金额（+元）", "订单金额"),
    "commission": ("commission", "服务费（元）"),
    "net": ("net", "实收金额"),
    "settled_at": ("settled_at", "入账时间"),
    "shop_id": ("shop_id",),
}
REQUIRED = ("order_id", "gross", "commission", "net")

#: Reasons of a RowError.
BAD_AMOUNT = "bad_amount"
TOO_MANY_DECIMALS = "too_many_decimals"
MISSING_VALUE = "missing_value"
BAD_ORDER_ID = "bad_order_id"
MISSING_SHOP = "missing_shop"
BAD_TIME = "bad_time"
NET_MISMATCH = "net_mismatch"
DUPLICATE_ROW = "duplicate_row"
SHORT_ROW = "short_row"


class SettlementFileError(ValueError):
    """The file as a whole cannot be used: not text, no header, a required column missing."""


class AmountError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that was not turned into a settlement line. ``row``: its line number in the file (1-based)."""

    row: int
    reason: str
    message: str
    platform_order_id: str = ""
    order_id: str | None = None  # our order id, when the row named one we could build

    def line(self) -> str:
        who = f" ({self.platform_order_id})" if self.platform_order_id else ""
        return f"row {self.row}{who}: {self.reason}: {self.message}"


# -- amounts ------------------------------------------------------------------------------------------------


def parse_yuan(text: str) -> int:
    """Yuan as written in a settlement file → integer fen, exactly. Raises AmountError (reason, message)."""
    s = text.strip()
    m = _AMOUNT.match(s)
    if m is None:
        raise AmountError(BAD_AMOUNT, f"not an amount in yuan: {text.strip()!r}")
    sign, whole, frac = m.group(1), m.group(2).replace(",", ""), m.group(3) or ""
    if len(frac) > 2:
        raise AmountError(TOO_MANY_DECIMALS, f"more than 2 decimals (fen): {s!r}")
    fen = int(whole) * 100 + int(frac.ljust(2, "0"))
    if fen > MAX_AMOUNT_FEN:
        raise AmountError(BAD_AMOUNT, f"amount out of range: {s!r}")
    return -fen if sign == "-" else fen


def format_yuan(fen: int, *, thousands: bool = False) -> str:
    """Integer fen → yuan with exactly 2 decimals (``-12.35``); ``parse_yuan`` reads it back to the same fen."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}" if thousands else f"{sign}{whole}.{cents:02d}"


# -- the file -----------------------------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM dropped), else GB18030 (GBK's superset: Alipay's exports)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise SettlementFileError(f"the file is neither UTF-8 nor GB18030/GBK text (byte {exc.start})") from None


def _norm(name: str) -> str:
    s = name.strip().lower().replace("（", "(").replace("）", ")")
    return re.sub(r"\s+", "", s)


def batch_id_for(data: bytes, tenant: str, channel: Channel | str, shop_id: str | None = None) -> str:
    """The default batch id: deterministic from the file's sha256 (and what it is read as: tenant, channel, shop),
    so running the same file again is the same batch and books nothing twice."""
    ch = channel.value if isinstance(channel, Channel) else channel
    digest = hashlib.sha256(data).hexdigest()
    return "stl-" + hashlib.sha256(f"{digest}|{tenant}|{ch}|{shop_id or ''}".encode()).hexdigest()[:20]


def is_ident(value: str) -> bool:
    return bool(_IDENT.match(value))


class _Lines:
    """Feeds csv the file's non-comment lines and remembers the line numbers each record came from."""

    def __init__(self, text: str) -> None:
        self._text = text
        self.taken: list[int] = []

    def __iter__(self) -> Iterator[str]:
        for n, line in enumerate(io.StringIO(self._text, newline=""), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            self.taken.append(n)
            yield line


def _header(cells: Sequence[str]) -> dict[str, int]:
    wanted = {alias: field for field, names in COLUMNS.items() for alias in (_norm(n) for n in names)}
    found: dict[str, int] = {}
    for i, cell in enumerate(cells):
        field = wanted.get(_norm(cell))
        if field is None:
            continue
        if field in found:
            raise SettlementFileError(
                f"two columns for {field!r}: {cells[found[field]].strip()!r} and {cell.strip()!r}"
            )
        found[field] = i
    missing = [f for f in REQUIRED if f not in found]
    if missing:
        names = "; ".join(f"{f}: " + " or ".join(COLUMNS[f]) for f in missing)
        raise SettlementFileError(f"missing column(s) — {names} (header: {', '.join(c.strip() for c in cells)})")
    return found


def china_time_ms(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS`` in China time (UTC+8) → epoch ms. ValueError when it is not that."""
    s = text.strip()
    if not _TIME.match(s):
        raise ValueError(f"not YYYY-MM-DD HH:MM:SS: {s!r}")
    return int(dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA).timestamp() * 1000)


def parse_settlement(
    data: bytes,
    *,
    tenant: str,
    channel: Channel | str,
    shop_id: str | None,
    batch_id: str,
    default_ts: int,
) -> tuple[list[SettlementLine], list[RowError]]:
    """The settlement lines of a file, and the rows that are not (with why). Raises SettlementFileError when the
    file cannot be used at all, ValueError for a batch id that is not an ``Ident``. ``shop_id``: the shop of rows
    that name none (None: every row must). ``default_ts``: the settlement time of rows without one (epoch ms)."""
    ch = Channel(channel)
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant {tenant!r} is not a tenant id")
    if not is_ident(batch_id) or len(batch_id) > 120:
        raise ValueError(f"batch id {batch_id!r} is not an identifier (letters, digits, _ . # / -; ≤ 120 chars)")
    source = _Lines(decode_text(data))
    reader = csv.reader(source)
    try:
        head = next(reader, None)
    except csv.Error as exc:
        raise SettlementFileError(f"not a CSV file: {exc}") from None
    if head is None:
        raise SettlementFileError("no header row (the file is empty or only comments)")
    columns = _header(head)
    width = max(columns.values()) + 1
    lines: list[SettlementLine] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}  # our order id -> first row that named it
    while True:
        source.taken.clear()
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise SettlementFileError(f"line {source.taken[-1] if source.taken else '?'}: bad CSV: {exc}") from None
        row = source.taken[0]
        if all(not c.strip() for c in cells):
            continue
        line, error = _row(cells, row, columns, width, tenant, ch, shop_id, batch_id, default_ts, seen)
        if error is not None:
            errors.append(error)
        elif line is not None:
            lines.append(line)
    return lines, errors


def _row(
    cells: list[str],
    row: int,
    columns: dict[str, int],
    width: int,
    tenant: str,
    channel: Channel,
    default_shop: str | None,
    batch_id: str,
    default_ts: int,
    seen: dict[str, int],
) -> tuple[SettlementLine | None, RowError | None]:
    def cell(field: str) -> str:
        i = columns.get(field)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    platform = cell("order_id")
    if len(cells) < width:
        return None, RowError(row, SHORT_ROW, f"{len(cells)} cells, the header has {width}", platform)
    if not platform:
        return None, RowError(row, MISSING_VALUE, "no order id")
    shop = cell("shop_id") or default_shop
    if not shop:
        return None, RowError(row, MISSING_SHOP, "no shop_id column value and no --shop", platform)
    ours = order_id(channel, shop, platform)
    if len(platform) > 128 or not is_ident(ours):
        return None, RowError(row, BAD_ORDER_ID, f"order id {platform!r} (shop {shop!r}) is not usable", platform)
    first = seen.setdefault(ours, row)
    if first != row:
        return None, RowError(row, DUPLICATE_ROW, f"the order is on row {first} already", platform, ours)
    amounts: dict[str, int] = {}
    for field in ("gross", "commission", "net"):
        text = cell(field)
        if not text:
            if field == "commission":
                amounts[field] = 0
                continue
            return None, RowError(row, MISSING_VALUE, f"no {field} amount", platform, ours)
        try:
            amounts[field] = parse_yuan(text)
        except AmountError as exc:
            return None, RowError(row, exc.reason, f"{field}: {exc}", platform, ours)
    gross, commission, net = amounts["gross"], amounts["commission"], amounts["net"]
    if net != gross - commission:
        hint = " (a fee written negative? write the commission positive)" if net == gross + commission else ""
        message = f"net {format_yuan(net)} != gross {format_yuan(gross)} − commission {format_yuan(commission)}{hint}"
        return None, RowError(row, NET_MISMATCH, message, platform, ours)
    ts = default_ts
    if when := cell("settled_at"):
        try:
            ts = china_time_ms(when)
        except ValueError as exc:
            return None, RowError(row, BAD_TIME, f"settled_at: {exc}", platform, ours)
    line = SettlementLine(
        line_id=f"{batch_id}.{row}",
        batch_id=batch_id,
        tenant=tenant,
        channel=channel,
        order_id=ours,
        platform_order_id=platform,
        gross_fen=gross,
        commission_fen=commission,
        net_fen=net,
        ts=ts,
    )
    try:  # msgspec validates constraints on decode only: check the record as the ledger will read it
        msgspec.convert(msgspec.to_builtins(line), SettlementLine)
    except msgspec.ValidationError as exc:
        return None, RowError(row, BAD_ORDER_ID if "order_id" in str(exc) else BAD_AMOUNT, str(exc), platform, ours)
    return line, None


def mentioned_orders(lines: Iterable[SettlementLine], errors: Iterable[RowError] = ()) -> set[str]:
    """Our order ids the file names: its lines, and its bad rows that named an order (those are row errors, not
    missing in the file)."""
    return {ln.order_id for ln in lines} | {e.order_id for e in errors if e.order_id}


# -- the books ----------------------------------------------------------------------------------------------


def receivables_from_vouchers(
    vouchers: Iterable[Voucher], tenant: str, channel: Channel | str, receivable_code: str = "1122"
) -> dict[str, int]:
    """Open receivable per order of ``tenant`` on ``channel``: debits − credits on the receivable account over
    every voucher of the order (revenue, returns, commission, payout). A voucher read twice counts once."""
    ch = str(channel.value if isinstance(channel, Channel) else channel)
    seen: set[str] = set()
    open_fen: dict[str, int] = {}
    for v in vouchers:
        if v.tenant != tenant or v.order_id is None or v.channel is None or str(v.channel) != ch:
            continue
        if v.voucher_id in seen:
            continue
        seen.add(v.voucher_id)
        for line in v.lines:
            if line.account == receivable_code:
                open_fen[v.order_id] = open_fen.get(v.order_id, 0) + line.debit_fen - line.credit_fen
    return open_fen


def shops_of(lines: Iterable[SettlementLine]) -> set[str]:
    """The shops the lines are for: order ids are ``<channel>-<shop>-<platform order id>``."""
    shops = set()
    for ln in lines:
        rest = ln.order_id[len(str(ln.channel)) + 1 :]
        suffix = "-" + ln.platform_order_id
        if rest.endswith(suffix):
            shops.add(rest[: -len(suffix)])
    return shops


def _of_shops(order: str, channel: str, shops: set[str] | None) -> bool:
    if not shops:
        return True
    return any(order.startswith(f"{channel}-{shop}-") for shop in shops)


def missing_in_file(
    receivables: dict[str, int],
    file_orders: set[str],
    *,
    tenant: str,
    channel: Channel | str,
    batch_id: str,
    ts: int,
    shops: set[str] | None = None,
) -> list[Reconciliation]:
    """A ``missing_in_file`` result for every order with an open receivable (> 0) that the file does not mention,
    in order id order. ``receivables`` are the tenant's on ``channel`` (``receivables_from_vouchers``); ``shops``
    narrows them to the shops the file covers (order ids ``<channel>-<shop>-…``; None: every shop)."""
    ch = Channel(channel)
    return [
        Reconciliation(
            result_id=f"recon.{tenant}.{batch_id}.{order}",
            batch_id=batch_id,
            tenant=tenant,
            order_id=order,
            channel=ch,
            status=ReconStatus.MISSING_IN_FILE,
            book_receivable_fen=fen,
            detail="the books expect a payout the file does not have",
            ts=ts,
        )
        for order, fen in sorted(receivables.items())
        if fen > 0 and order not in file_orders and _of_shops(order, ch.value, shops)
    ]


# -- the report ---------------------------------------------------------------------------------------------


def summarize(results: Iterable[Reconciliation]) -> dict[str, Any]:
    """Counts and fen totals per status (every status listed, in ReconStatus order), and the total count."""
    by: dict[str, dict[str, int]] = {
        s.value: {"count": 0, "file_gross_fen": 0, "book_receivable_fen": 0, "commission_fen": 0, "net_fen": 0}
        for s in ReconStatus
    }
    total = 0
    for r in results:
        agg = by[ReconStatus(r.status).value]
        agg["count"] += 1
        agg["file_gross_fen"] += r.file_gross_fen or 0
        agg["book_receivable_fen"] += r.book_receivable_fen or 0
        agg["commission_fen"] += r.commission_fen
        agg["net_fen"] += r.net_fen
        total += 1
    return {"results": total, "by_status": by}


def report_text(results: Sequence[Reconciliation], errors: Sequence[RowError], limit: int = 20) -> str:
    """The table ``oms settle`` prints: per status count and amounts (yuan), then the first ``limit`` problems
    (row errors first, then results that are not matched)."""
    summary = summarize(results)["by_status"]
    head = f"{'status':<18}{'count':>7}{'file gross':>16}{'books':>16}{'commission':>14}{'net':>16}"
    out = [head, "-" * len(head)]
    for status, agg in summary.items():
        out.append(
            f"{status:<18}{agg['count']:>7}{format_yuan(agg['file_gross_fen'], thousands=True):>16}"
            f"{format_yuan(agg['book_receivable_fen'], thousands=True):>16}"
            f"{format_yuan(agg['commission_fen'], thousands=True):>14}"
            f"{format_yuan(agg['net_fen'], thousands=True):>16}"
        )
    out.append(f"{'row errors':<18}{len(errors):>7}")
    problems = [e.line() for e in errors]
    for r in results:
        if r.status != ReconStatus.MATCHED:
            amounts = []
            if r.file_gross_fen is not None:
                amounts.append(f"file {format_yuan(r.file_gross_fen)}")
            if r.book_receivable_fen is not None:
                amounts.append(f"books {format_yuan(r.book_receivable_fen)}")
            detail = f" — {r.detail}" if r.detail else ""
            problems.append(f"{r.order_id}: {ReconStatus(r.status).value} ({', '.join(amounts)}){detail}")
    if problems:
        out.append("")
        out.append(f"problems ({len(problems)}{f', first {limit}' if len(problems) > limit else ''}):")
        out.extend(f"  {p}" for p in problems[:limit])
    return "\n".join(out)
