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
  ``129.0`` and ``129.00`` are 12900, ``0.1`` is 10. Digits are ASCII ``0``–``9`` only: full-width (``１２３``),
  Arabic-Indic (``١٢٣``), superscript and other Unicode digits — which Python's ``int()`` would take — are a
  row error, in amounts and in ``settled_at`` alike. An optional sign, and ``,`` thousands separators in groups
  of three (``1,234.50`` is 123450 — the cell is quoted in the CSV) are accepted; anything else (3 decimals,
  ``1,23``, ``¥``, blanks inside, ``1e3``) is a row error. An amount is at most ``MAX_AMOUNT_FEN`` (10^15 fen,
  ten trillion yuan: the schema's range) either way, and a cell longer than ``MAX_AMOUNT_CHARS`` (24) is refused
  before any digit is read. An empty commission cell is 0; an empty gross or net is an error.
* **Signs**: ``gross`` and ``net`` may be negative (``-12.35`` settles a refund: money back to the buyer);
  ``commission`` — the fees the platform *kept* — never is (``negative_commission``: a fee written negative,
  or a refunded fee, which is not a settlement of ours). Each row must satisfy ``net == gross − commission``.
* **Rows**: a bad row is a :class:`RowError` (its line number in the file, a reason code, the column it is
  about as the header names it, a message) and the other rows still parse. Cells never span lines: each line is
  one CSV record, so a stray quote spoils its own line only. A line with a NUL byte (``bad_text``), longer than
  ``MAX_LINE_CHARS`` (16,384: ``line_too_long``), with fewer cells than the columns used (``short_row``) or with
  non-empty cells beyond the header (``too_many_cells``) is a row error. The same order twice in one file: the
  second (and later) rows are ``duplicate_row``. Messages quote at most 40 characters of a cell.
* **The file**: at most ``MAX_FILE_BYTES`` (32 MiB) and ``MAX_LINES`` (200,000 lines, comments and blanks
  counted): split a bigger statement by day. A file over either limit, not text (neither UTF-8 nor GB18030, or
  a header with NUL or control bytes: a spreadsheet or an archive, not a CSV), without a header, with a header
  longer than ``MAX_LINE_CHARS``, missing a required column or naming one field twice is a
  :class:`SettlementFileError` and nothing of it is used.

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
#: The longest amount cell read (blanks around it trimmed): ``-10,000,000,000,000.00`` is 22 characters.
MAX_AMOUNT_CHARS = 24
#: The longest line of the file (a row is a few hundred characters; Alipay's are under 300).
MAX_LINE_CHARS = 16_384
#: The largest file read (``oms settle`` reads no more than this and one byte) and its most lines (every line,
#: comments and blanks counted). A month of a large shop is a few hundred thousand rows: split it by day.
MAX_FILE_BYTES = 32 * 2**20
MAX_LINES = 200_000
#: The most characters of a cell a message quotes.
SHOWN_CHARS = 40
_EPOCH_MS_MAX = 32503680000000  # schemas.common.EpochMs
_IDENT = re.compile(Ident.__metadata__[0].pattern)
_TENANT = re.compile(Tenant.__metadata__[0].pattern)
# ASCII digits only: ``\d`` (and int()) take every Unicode digit, full-width and Arabic-Indic included.
_AMOUNT = re.compile(r"([+-]?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

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
#: Amount fields that may be negative (a refund settled). The commission never is.
SIGNED = ("gross", "net")

#: Reasons of a RowError.
BAD_AMOUNT = "bad_amount"
TOO_MANY_DECIMALS = "too_many_decimals"
OUT_OF_RANGE = "out_of_range"
NEGATIVE_COMMISSION = "negative_commission"
MISSING_VALUE = "missing_value"
BAD_ORDER_ID = "bad_order_id"
MISSING_SHOP = "missing_shop"
BAD_TIME = "bad_time"
NET_MISMATCH = "net_mismatch"
DUPLICATE_ROW = "duplicate_row"
SHORT_ROW = "short_row"
TOO_MANY_CELLS = "too_many_cells"
LINE_TOO_LONG = "line_too_long"
BAD_TEXT = "bad_text"
BAD_CSV = "bad_csv"


class SettlementFileError(ValueError):
    """The file as a whole cannot be used: not text, too big, no header, a required column missing."""


class AmountError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that was not turned into a settlement line. ``row``: its line number in the file (1-based);
    ``column``: the header's name of the cell at fault ("" when the row as a whole is)."""

    row: int
    reason: str
    message: str
    platform_order_id: str = ""
    order_id: str | None = None  # our order id, when the row named one we could build
    column: str = ""

    def line(self) -> str:
        who = f" ({self.platform_order_id})" if self.platform_order_id else ""
        return f"row {self.row}{who}: {self.reason}: {self.message}"


def show(text: str, limit: int = SHOWN_CHARS) -> str:
    """A cell for a message: its repr, cut to ``limit`` characters (a hostile cell can be megabytes)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


# -- amounts ------------------------------------------------------------------------------------------------


def parse_yuan(text: str) -> int:
    """Yuan as written in a settlement file → integer fen, exactly. Raises AmountError (reason, message). ASCII
    digits only; at most ``MAX_AMOUNT_CHARS`` characters and ``MAX_AMOUNT_FEN`` either way."""
    s = text.strip()
    if len(s) > MAX_AMOUNT_CHARS:
        raise AmountError(OUT_OF_RANGE, f"{len(s):,} characters: not an amount (at most {MAX_AMOUNT_CHARS})")
    m = _AMOUNT.fullmatch(s)
    if m is None:
        if any(c.isdigit() and not ("0" <= c <= "9") for c in s):
            raise AmountError(BAD_AMOUNT, f"only ASCII digits 0-9 are amounts: {show(s)}")
        raise AmountError(BAD_AMOUNT, f"not an amount in yuan: {show(s)}")
    sign, whole, frac = m.group(1), m.group(2).replace(",", ""), m.group(3) or ""
    if len(frac) > 2:
        raise AmountError(TOO_MANY_DECIMALS, f"more than 2 decimals (fen): {show(s)}")
    fen = int(whole) * 100 + int(frac.ljust(2, "0"))  # ≤ 24 ASCII digits: int() is exact and quick
    if fen > MAX_AMOUNT_FEN:
        raise AmountError(OUT_OF_RANGE, f"amount out of range (at most {format_yuan(MAX_AMOUNT_FEN)}): {show(s)}")
    return -fen if sign == "-" else fen


def format_yuan(fen: int, *, thousands: bool = False) -> str:
    """Integer fen → yuan with exactly 2 decimals (``-12.35``); ``parse_yuan`` reads it back to the same fen."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}" if thousands else f"{sign}{whole}.{cents:02d}"


# -- the file -----------------------------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM dropped), else GB18030 (GBK's superset: Alipay's exports; its BOM dropped too)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030").removeprefix("\ufeff")
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
    return bool(_IDENT.fullmatch(value))


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) of every line that is not blank nor a comment. A file of more than
    ``MAX_LINES`` lines is a SettlementFileError when the reader gets there."""
    for n, raw in enumerate(io.StringIO(text, newline=""), start=1):
        if n > MAX_LINES:
            raise SettlementFileError(f"more than {MAX_LINES:,} lines: split the statement (by day, say)")
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield n, line


def _cells(line: str) -> list[str]:
    """One line as one CSV record (a cell never spans lines). csv.Error for what csv refuses."""
    return next(csv.reader([line]), [])


def _header(n: int, line: str, binary: bool = False) -> tuple[dict[str, int], list[str]]:
    """field -> column index, and the header's cells. SettlementFileError when it is not a usable header;
    ``binary``: the file's start has control bytes (a missing column is then a file that is not CSV)."""
    if len(line) > MAX_LINE_CHARS:
        raise SettlementFileError(
            f"line {n}: the header is {len(line):,} characters long (at most {MAX_LINE_CHARS:,}): not a settlement file"
        )
    if bad := _CONTROL.search(line):
        raise SettlementFileError(
            f"line {n}: the header has control byte {bad.group()!r} at character {bad.start() + 1}: not a CSV text "
            "file (a spreadsheet or an archive? export it as CSV)"
        )
    try:
        cells = _cells(line)
    except csv.Error as exc:
        raise SettlementFileError(f"line {n}: the header is not CSV: {exc}") from None
    wanted = {alias: field for field, names in COLUMNS.items() for alias in (_norm(n) for n in names)}
    found: dict[str, int] = {}
    for i, cell in enumerate(cells):
        field = wanted.get(_norm(cell))
        if field is None:
            continue
        if field in found:
            raise SettlementFileError(
                f"two columns for {field!r}: {show(cells[found[field]].strip())} and {show(cell.strip())}"
            )
        found[field] = i
    missing = [f for f in REQUIRED if f not in found]
    if missing:
        names = "; ".join(f"{f}: " + " or ".join(COLUMNS[f]) for f in missing)
        head = ", ".join(c.strip() for c in cells)
        hint = " — the file has control bytes: not a CSV text file (a spreadsheet or an archive?)" if binary else ""
        raise SettlementFileError(f"missing column(s) — {names} (header, line {n}: {show(head, 200)}){hint}")
    return found, cells


def china_time_ms(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS`` in China time (UTC+8), ASCII digits → epoch ms. ValueError when it is not that or
    not between 1970 and 3000."""
    s = text.strip()
    if not _TIME.fullmatch(s):
        raise ValueError(f"not YYYY-MM-DD HH:MM:SS (ASCII digits): {show(s)}")
    ms = int(dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA).timestamp() * 1000)
    if not 0 <= ms <= _EPOCH_MS_MAX:
        raise ValueError(f"out of range (1970 to 3000): {show(s)}")
    return ms


def parse_settlement(
    data: bytes,
    *,
    tenant: str,
    channel: Channel | str,
    shop_id: str | None,
    batch_id: str,
    default_ts: int,
) -> tuple[list[SettlementLine], list[RowError]]:
    """The settlement lines of a file, and the rows that are not (with why, where and which column). Raises
    SettlementFileError when the file cannot be used at all (and only that for anything in ``data``),
    ValueError for a tenant, channel or batch id that is not one. ``shop_id``: the shop of rows that name none
    (None: every row must). ``default_ts``: the settlement time of rows without one (epoch ms)."""
    ch = Channel(channel)
    if not _TENANT.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r} is not a tenant id")
    if not is_ident(batch_id) or len(batch_id) > 120:
        raise ValueError(f"batch id {batch_id!r} is not an identifier (letters, digits, _ . # / -; ≤ 120 chars)")
    if len(data) > MAX_FILE_BYTES:
        raise SettlementFileError(
            f"the file is over {MAX_FILE_BYTES // 2**20} MiB ({len(data):,} bytes or more): split it (by day, say)"
        )
    text = decode_text(data)
    source = _lines(text)
    first = next(source, None)
    if first is None:
        raise SettlementFileError("no header row (the file is empty or only comments)")
    columns, head = _header(*first, binary=_CONTROL.search(text, 0, 8192) is not None)
    names = {field: head[i].strip() for field, i in columns.items()}
    width = max(columns.values()) + 1
    lines: list[SettlementLine] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}  # our order id -> first row that named it
    for row, text in source:
        if len(text) > MAX_LINE_CHARS:
            errors.append(RowError(row, LINE_TOO_LONG, f"{len(text):,} characters (at most {MAX_LINE_CHARS:,})"))
            continue
        if (nul := text.find("\x00")) >= 0:
            errors.append(RowError(row, BAD_TEXT, f"a NUL byte at character {nul + 1}: the line is not text"))
            continue
        try:
            cells = _cells(text)
        except csv.Error as exc:
            errors.append(RowError(row, BAD_CSV, f"not a CSV record: {exc}"))
            continue
        if all(not c.strip() for c in cells):
            continue
        line, error = _row(
            cells, row, columns, names, width, len(head), tenant, ch, shop_id, batch_id, default_ts, seen
        )
        if error is not None:
            errors.append(error)
        elif line is not None:
            lines.append(line)
    return lines, errors


def _row(
    cells: list[str],
    row: int,
    columns: dict[str, int],
    names: dict[str, str],
    width: int,
    header_width: int,
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

    def label(field: str) -> str:
        name = names.get(field, field)
        return field if _norm(name) == field else f"{field} ({name})"

    platform = cell("order_id")
    shown = platform if len(platform) <= 128 else platform[:SHOWN_CHARS] + "…"
    if len(cells) < width:
        return None, RowError(row, SHORT_ROW, f"{len(cells)} cells, the columns used need {width}", shown)
    extra = [i + 1 for i in range(header_width, len(cells)) if cells[i].strip()]
    if extra:
        where = f"cell {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
        message = f"{len(cells)} cells, the header has {header_width}: {where} not empty (an unquoted ','?)"
        return None, RowError(row, TOO_MANY_CELLS, message, shown)
    if not platform:
        return None, RowError(row, MISSING_VALUE, "no order id", column=names["order_id"])
    shop = cell("shop_id") or default_shop
    if not shop:
        return None, RowError(row, MISSING_SHOP, "no shop_id column value and no --shop", shown, column="shop_id")
    ours = order_id(channel, shop, platform)
    if len(platform) > 128 or not is_ident(ours):
        message = f"order id {show(platform)} (shop {show(shop)}) is not usable (letters, digits, _ . # / -)"
        bad_shop = is_ident(order_id(channel, "s", platform)) and len(platform) <= 128
        column = names.get("shop_id", "--shop") if bad_shop else names["order_id"]
        return None, RowError(row, BAD_ORDER_ID, message, shown, column=column)
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
            return None, RowError(row, MISSING_VALUE, f"no {label(field)} amount", platform, ours, names[field])
        try:
            amounts[field] = parse_yuan(text)
        except AmountError as exc:
            return None, RowError(row, exc.reason, f"{label(field)}: {exc}", platform, ours, names[field])
        if amounts[field] < 0 and field not in SIGNED:
            message = (
                f"{label(field)}: {format_yuan(amounts[field])}: the fees the platform kept are written positive "
                "(a refunded fee is not a settlement line)"
            )
            return None, RowError(row, NEGATIVE_COMMISSION, message, platform, ours, names[field])
    gross, commission, net = amounts["gross"], amounts["commission"], amounts["net"]
    if net != gross - commission:
        hint = " (the fee added instead of taken off?)" if net == gross + commission else ""
        message = f"net {format_yuan(net)} != gross {format_yuan(gross)} − commission {format_yuan(commission)}{hint}"
        return None, RowError(row, NET_MISMATCH, message, platform, ours, names["net"])
    ts = default_ts
    if when := cell("settled_at"):
        try:
            ts = china_time_ms(when)
        except ValueError as exc:
            return None, RowError(row, BAD_TIME, f"{label('settled_at')}: {exc}", platform, ours, names["settled_at"])
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
        reason = BAD_ORDER_ID if "order_id" in str(exc) else BAD_AMOUNT
        return None, RowError(row, reason, show(str(exc), 200), platform, ours)
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
