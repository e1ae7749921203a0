"""Settlement files (对账单) and payout reconciliation, pure: agents.ledger.settlement."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.ledger.settlement import (
    CHINA,
    MAX_AMOUNT_FEN,
    MAX_FILE_BYTES,
    MAX_LINE_CHARS,
    MAX_LINES,
    AmountError,
    RowError,
    SettlementFileError,
    batch_id_for,
    format_yuan,
    mentioned_orders,
    missing_in_file,
    parse_settlement,
    parse_yuan,
    receivables_from_vouchers,
    report_text,
    shops_of,
    summarize,
)
from schemas import wire
from schemas.ledger import Reconciliation, ReconStatus, SettlementLine, Voucher, VoucherKind, VoucherLine
from schemas.order import Channel

TS = 1_714_000_000_000
MAY_1_10H_CHINA = 1_714_528_800_000  # 2024-05-01 10:00:00 +08:00

CHINESE = """#支付宝账务明细查询
#账号：[20880000000000000156]
#起始日期：[2024年05月01日 00:00:00]   终止日期：[2024年05月02日 00:00:00]
#-----------------------------------------账务明细列表----------------------------------------
商户订单号,收入金额（+元）,服务费（元）,实收金额,入账时间,备注
T1001\t,129.00\t,6.45\t,122.55\t,2024-05-01 10:00:00\t,
T1002,"1,234.50",61.73,1172.77,2024-05-01 10:05:00,大促
T1003,0.1,0,0.1,,
#-----------------------------------------账务明细列表结束------------------------------------
#收入合计：3笔，共1363.60元
"""

ENGLISH = """order_id,gross,commission,net,settled_at,shop_id
T1001,129.00,6.45,122.55,2024-05-01 10:00:00,s1
T2001,12.35,0.35,12.00,,s2
"""


def parse(data: bytes | str, shop: str | None = "s1", batch: str = "b1") -> tuple[list[SettlementLine], list[RowError]]:
    raw = data.encode() if isinstance(data, str) else data
    return parse_settlement(raw, tenant="t1", channel="tmall", shop_id=shop, batch_id=batch, default_ts=TS)


# -- the file ------------------------------------------------------------------------------------------------


def test_an_alipay_style_file_with_chinese_headers_comments_and_tab_padding_parses_to_exact_fen() -> None:
    lines, errors = parse(CHINESE)
    assert errors == []
    assert [(ln.platform_order_id, ln.gross_fen, ln.commission_fen, ln.net_fen) for ln in lines] == [
        ("T1001", 12900, 645, 12255),
        ("T1002", 123450, 6173, 117277),
        ("T1003", 10, 0, 10),
    ]
    first = lines[0]
    assert first.order_id == "tmall-s1-T1001"
    assert first.key == "t1:tmall-s1-T1001"
    assert first.line_id == "b1.6"  # the line number in the file, comments counted
    assert first.batch_id == "b1" and first.tenant == "t1" and first.channel is Channel.TMALL
    assert first.ts == MAY_1_10H_CHINA  # China time
    assert lines[2].ts == TS  # no settlement time: the default
    # what goes on the wire is a valid inbox record
    assert wire.decode(wire.encode(first), SettlementLine) == first


def test_english_headers_and_a_shop_column_that_overrides_the_default_shop() -> None:
    lines, errors = parse(ENGLISH, shop=None)
    assert errors == []
    assert [ln.order_id for ln in lines] == ["tmall-s1-T1001", "tmall-s2-T2001"]
    assert lines[1].gross_fen == 1235 and lines[1].net_fen == 1200
    assert shops_of(lines) == {"s1", "s2"}


def test_a_bom_and_gbk_bytes_are_read() -> None:
    with_bom = "\ufeff" + CHINESE
    assert parse(with_bom.encode("utf-8"))[0] == parse(CHINESE)[0]
    assert parse(("\ufeff" + ENGLISH).encode("utf-8"))[0] == parse(ENGLISH)[0]  # a BOM before the header
    gbk, errors = parse(CHINESE.encode("gbk"))
    assert errors == [] and [ln.gross_fen for ln in gbk] == [12900, 123450, 10]
    crlf, _ = parse(CHINESE.replace("\n", "\r\n"))
    assert [ln.line_id for ln in crlf] == ["b1.6", "b1.7", "b1.8"]


def test_bad_rows_are_reported_with_their_row_numbers_and_the_good_rows_still_parse() -> None:
    text = (
        "order_id,gross,commission,net,settled_at\n"  # row 1
        "A1,10.00,1.00,9.00,\n"  # 2: good
        "A2,ten,1.00,9.00,\n"  # 3: bad amount
        "A3,10.001,1.00,9.001,\n"  # 4: 3 decimals
        "A4,10.00,1.00,8.00,\n"  # 5: net != gross - commission
        "A1,10.00,1.00,9.00,\n"  # 6: A1 again
        "# a comment in the middle\n"  # 7
        "A5,10.00,1.00,9.00,2024-13-01 00:00:00\n"  # 8: bad time
        "A6,10.00,1.00,9.00,01/05/2024 10:00\n"  # 9: not the format
        ",10.00,1.00,9.00,\n"  # 10: no order id
        "A7,10.00,-1.00,11.00,\n"  # 11: a negative commission: the fees kept are never negative
        "A8,10.00,-1.00,9.00,\n"  # 12: fee written negative (and net as if it was taken off)
        "A9,,1.00,9.00,\n"  # 13: no gross
        "A10,5.00,,5.00,\n"  # 14: no commission: 0
        "A11,1,23.00,1.00,0.23,\n"  # 15: unquoted thousands separator shifts the cells: net mismatch
        "A12,-12.35,0,-12.35,\n"  # 16: a refund settled
        "bad:id,1.00,0,1.00,\n"  # 17: not an identifier
        "A13,1.00\n"  # 18: short row
    )
    lines, errors = parse(text)
    assert [ln.platform_order_id for ln in lines] == ["A1", "A10", "A12"]
    assert [ln.gross_fen for ln in lines] == [1000, 500, -1235]
    assert [(e.row, e.reason) for e in errors] == [
        (3, "bad_amount"),
        (4, "too_many_decimals"),
        (5, "net_mismatch"),
        (6, "duplicate_row"),
        (8, "bad_time"),
        (9, "bad_time"),
        (10, "missing_value"),
        (11, "negative_commission"),
        (12, "negative_commission"),
        (13, "missing_value"),
        (15, "net_mismatch"),
        (17, "bad_order_id"),
        (18, "short_row"),
    ]
    by_row = {e.row: e for e in errors}
    assert "row 2" in by_row[6].message and by_row[6].order_id == "tmall-s1-A1"
    assert "positive" in by_row[12].message and by_row[12].column == "commission"
    assert by_row[3].column == "gross" and by_row[8].column == "settled_at" and by_row[18].column == ""
    assert by_row[3].line().startswith("row 3 (A2): bad_amount")
    # orders named by bad rows are in the file: not missing in it
    assert {"tmall-s1-A2", "tmall-s1-A4", "tmall-s1-A1"} <= mentioned_orders(lines, errors)
    assert "" not in mentioned_orders(lines, errors)


def test_a_row_without_a_shop_is_an_error_when_no_default_shop_is_given() -> None:
    lines, errors = parse("order_id,gross,commission,net\nA1,1.00,0,1.00\n", shop=None)
    assert lines == [] and [(e.row, e.reason) for e in errors] == [(2, "missing_shop")]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("order_id,gross,net\nA1,1.00,1.00\n", "commission"),
        ("商户订单号,订单金额,实收金额\nA1,1.00,1.00\n", "服务费"),
        ("order_id,gross,订单金额,commission,net\n", "two columns"),
        ("# only comments\n\n", "no header"),
        ("", "no header"),
    ],
)
def test_a_missing_column_or_header_is_a_file_level_error(text: str, why: str) -> None:
    with pytest.raises(SettlementFileError, match=why):
        parse(text)


def test_a_batch_id_must_be_an_identifier() -> None:
    with pytest.raises(ValueError, match="batch id"):
        parse(ENGLISH, batch="a:b")
    with pytest.raises(ValueError):
        parse_settlement(b"", tenant="t1", channel="nowhere", shop_id="s1", batch_id="b1", default_ts=TS)


def test_the_default_batch_id_is_deterministic_per_file_and_an_identifier() -> None:
    data = CHINESE.encode()
    a = batch_id_for(data, "t1", "tmall", "s1")
    assert a == batch_id_for(data, "t1", Channel.TMALL, "s1")
    assert a != batch_id_for(data + b"\n", "t1", "tmall", "s1")
    assert a != batch_id_for(data, "t1", "tmall", "s2")
    lines, _ = parse(data, batch=a)
    assert lines[0].line_id == f"{a}.6"


# -- amounts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("0.1", 10),
        ("12.35", 1235),
        ("129", 12900),
        ("129.0", 12900),
        ("1,234.50", 123450),
        ("1,234,567.89", 123456789),
        ("-0.01", -1),
        ("+3.10", 310),
        (" 7.00\t", 700),
        ("0.29", 29),  # float(0.29) * 100 is 28.999…
        ("1152921504606846.97", None),  # beyond the schema's range
    ],
)
def test_amounts_parse_to_exact_fen(text: str, fen: int | None) -> None:
    if fen is None:
        with pytest.raises(AmountError):
            parse_yuan(text)
    else:
        assert parse_yuan(text) == fen


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12.345", "too_many_decimals"),
        ("12.300", "too_many_decimals"),
        ("1,23.00", "bad_amount"),
        ("1,2345", "bad_amount"),
        ("¥12.00", "bad_amount"),
        ("1e3", "bad_amount"),
        ("12.", "bad_amount"),
        (".5", "bad_amount"),
        ("1 000", "bad_amount"),
        ("--1", "bad_amount"),
        ("", "bad_amount"),
    ],
)
def test_amounts_that_are_not_yuan_with_at_most_two_decimals_are_refused(text: str, reason: str) -> None:
    with pytest.raises(AmountError) as caught:
        parse_yuan(text)
    assert caught.value.reason == reason


@given(st.integers(min_value=-(10**15), max_value=10**15), st.booleans())
def test_formatting_fen_as_yuan_and_parsing_it_back_is_the_identity(fen: int, thousands: bool) -> None:
    assert parse_yuan(format_yuan(fen, thousands=thousands)) == fen


# -- hostile cells and files: row errors with their place, file errors, never anything else ------------------

HEAD = "order_id,gross,commission,net,settled_at\n"


def test_a_5000_digit_amount_is_a_row_error_of_its_cell_and_the_other_rows_still_parse() -> None:
    huge = "9" * 5000
    lines, errors = parse(HEAD + f"A1,{huge},0,1.00,\nA2,1.00,0,1.00,\nA3,1.00,{'1' * 300}.00,1.00,\n")
    assert [ln.platform_order_id for ln in lines] == ["A2"]
    assert [(e.row, e.reason, e.column) for e in errors] == [
        (2, "out_of_range", "gross"),
        (4, "out_of_range", "commission"),
    ]
    assert "5,000 characters" in errors[0].message and len(errors[0].line()) < 200
    with pytest.raises(AmountError) as caught:
        parse_yuan("1" * 5000)
    assert caught.value.reason == "out_of_range"
    # the largest amount the schema holds is read; one fen more is out of range
    assert parse_yuan(format_yuan(MAX_AMOUNT_FEN, thousands=True)) == MAX_AMOUNT_FEN
    with pytest.raises(AmountError, match="out of range"):
        parse_yuan(format_yuan(MAX_AMOUNT_FEN + 1))


@pytest.mark.parametrize(
    "digits",
    [
        "１２３",  # full-width
        "١٢٣",  # Arabic-Indic
        "۱۲۳",  # extended Arabic-Indic (Persian)
        "१२३",  # Devanagari
        "¹²³",  # superscripts
        "𝟏𝟐𝟑",  # mathematical bold
        "1２3",  # one full-width digit among ASCII ones
    ],
)
def test_only_ascii_digits_are_amounts_and_times(digits: str) -> None:
    with pytest.raises(AmountError) as caught:
        parse_yuan(digits)
    assert caught.value.reason == "bad_amount"
    with pytest.raises(AmountError):
        parse_yuan(f"{digits}.00")
    lines, errors = parse(
        HEAD
        + f"A1,{digits},0,{digits},\n"
        + f"A2,1.00,{digits},1.00,\n"
        + f"A3,1.00,0,1.00,{digits[:1] * 4}-05-01 10:00:00\n"
        + "A4,1.00,0,1.00,2024-05-01 10:00:00\n"
    )
    assert [ln.platform_order_id for ln in lines] == ["A4"]
    assert [(e.row, e.reason, e.column) for e in errors] == [
        (2, "bad_amount", "gross"),
        (3, "bad_amount", "commission"),
        (4, "bad_time", "settled_at"),
    ]


def test_the_commission_is_never_negative_gross_and_net_may_be() -> None:
    lines, errors = parse(
        "商户订单号,收入金额（+元）,服务费（元）,实收金额\n"
        "A1,-12.35,0.00,-12.35\n"  # a refund settled
        "A2,-12.35,1.00,-13.35\n"  # a refund with a fee kept
        "A3,1.00,2.00,-1.00\n"  # fees over the amount: paid out negative
        "A4,10.00,-0.01,10.01\n"  # negative commission
        "A5,-10.00,-0.50,-9.50\n"  # a refunded fee
        "A6,10.00,-0.00,10.00\n"  # minus zero is zero
    )
    assert [(ln.platform_order_id, ln.gross_fen, ln.commission_fen, ln.net_fen) for ln in lines] == [
        ("A1", -1235, 0, -1235),
        ("A2", -1235, 100, -1335),
        ("A3", 100, 200, -100),
        ("A6", 1000, 0, 1000),
    ]
    assert [(e.row, e.reason, e.column) for e in errors] == [
        (5, "negative_commission", "服务费（元）"),
        (6, "negative_commission", "服务费（元）"),
    ]
    assert errors[0].message.startswith("commission (服务费（元）): -0.01")


def test_garbage_nul_long_lines_stray_quotes_and_wrong_cell_counts_are_row_errors_of_their_line() -> None:
    rows = [
        "A1,1.00,0,1.00,",  # 2: good
        "A2,1.00,0,1.00\x00,",  # 3: NUL
        "A3," + "x" * (MAX_LINE_CHARS + 10),  # 4: too long
        'A4,"1.00,0,1.00,',  # 5: a stray quote: the rest of the line is one cell
        "A5,1.00,0,1.00,",  # 6: good (the stray quote spoils its own line only)
        "A6,1,000.00,0,1,000.00,",  # 7: unquoted thousands: cells shifted beyond the header
        "A7,1.00,0",  # 8: short
        "A8,\t ,0,1.00,",  # 9: gross blank
        "A9,1.00,0,1.00,,,,",  # 10: empty cells beyond the header are fine (Alipay ends rows with ',')
        "A10,1.00,0,1.00,2024-05-01 10:00:00\x01",  # 11: a control byte in a time
        "A11,NaN,0,NaN,",  # 12
        "A12,inf,0,inf,",  # 13
        "A13,0x10,0,0x10,",  # 14
        "A14,1_000,0,1_000,",  # 15: int() takes underscores, an amount does not
        "A15,١.00,0,١.00,",  # 16
        ",,,,",  # 17: an empty record: skipped
        "A16," + "1" * 3000 + ",0,1,",  # 18: a long cell in a line within the limit
        "\u3000A17\u3000,1.00,0,1.00,",  # 19: ideographic blanks around a cell are blanks
    ]
    lines, errors = parse(HEAD + "\n".join(rows) + "\n")
    assert [ln.platform_order_id for ln in lines] == ["A1", "A5", "A9", "A17"]
    assert [(e.row, e.reason) for e in errors] == [
        (3, "bad_text"),
        (4, "line_too_long"),
        (5, "short_row"),
        (7, "too_many_cells"),
        (8, "short_row"),
        (9, "missing_value"),
        (11, "bad_time"),
        (12, "bad_amount"),
        (13, "bad_amount"),
        (14, "bad_amount"),
        (15, "bad_amount"),
        (16, "bad_amount"),
        (18, "out_of_range"),
    ]
    assert all(len(e.line()) < 300 for e in errors), [e.line() for e in errors]


def test_a_file_that_is_not_a_csv_text_is_a_file_error_with_a_clear_message() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"
    xlsx = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(256))
    for data in (png, xlsx, b"\x00" * 100, b"order_id,gross\x00,commission,net\n"):
        with pytest.raises(SettlementFileError, match=r"not|neither") as caught:
            parse(data)
        assert len(str(caught.value)) < 400
    with pytest.raises(SettlementFileError, match="header is 20,000 characters"):
        parse("x" * 20_000 + "\nA1,1,0,1\n")
    with pytest.raises(SettlementFileError, match="missing column") as caught:
        parse(",".join(["junk"] * 900) + "\n")
    assert len(str(caught.value)) < 600  # the header it shows is cut


def test_a_file_over_the_byte_or_line_limit_is_a_file_error() -> None:
    with pytest.raises(SettlementFileError, match="over 32 MiB"):
        parse(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(SettlementFileError, match="more than 200,000 lines"):
        parse(HEAD + "\n" * MAX_LINES)
    lines, errors = parse(HEAD + "\n" * (MAX_LINES - 2) + "A1,1.00,0,1.00,\n")  # the last line allowed
    assert [ln.line_id for ln in lines] == [f"b1.{MAX_LINES}"] and errors == []


def test_oms_settle_reads_no_more_of_a_huge_file_than_the_limit(
    fake_kafka: FakeKafka,
    tmp_path,  # type: ignore[no-untyped-def]
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    with (tmp_path / "settle.csv").open("wb") as f:
        f.truncate(8 * MAX_FILE_BYTES)  # sparse: 256 MiB that take no room
    code, report, printed = run_settle(tmp_path, capsys)
    assert code == 2 and report == {} and "over 32 MiB" in printed and fake_kafka.transactions == []


# Cells a hostile or broken file holds: digits of every script, signs, separators, quotes, blanks, controls.
HOSTILE_CELL = st.one_of(
    st.text(alphabet="0123456789.,+-eE_ \t\"'#１٢³\x00\x01\u3000¥", max_size=30),
    st.text(max_size=30),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["", "9" * 5000, "NaN", "-0", "1,234.50", "2024-05-01 10:00:00", "२०२४-05-01 10:00:00"]),
)
BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_result(data: bytes) -> None:
    """What any file gives: lines that keep every rule, row errors that say where, or one SettlementFileError."""
    try:
        lines, errors = parse(data)
    except SettlementFileError as exc:
        assert str(exc) and len(str(exc)) < 1000
        return
    count = data.count(b"\n") + data.count(b"\r") + 1
    for ln in lines:
        assert ln.net_fen == ln.gross_fen - ln.commission_fen and ln.commission_fen >= 0
        assert max(abs(ln.gross_fen), abs(ln.net_fen), ln.commission_fen) <= MAX_AMOUNT_FEN
        assert wire.decode(wire.encode(ln), SettlementLine) == ln
    for e in errors:
        assert 2 <= e.row <= count and e.reason and len(e.line()) < 1000


@BOUNDED
@given(st.binary(max_size=2000))
def test_any_bytes_are_lines_row_errors_or_a_file_error(data: bytes) -> None:
    check_result(data)
    check_result(HEAD.encode() + data)


@BOUNDED
@given(st.text(max_size=2000))
def test_any_text_after_a_header_is_lines_row_errors_or_a_file_error(text: str) -> None:
    check_result((HEAD + text).encode("utf-8", "surrogatepass"))
    check_result(text.encode("utf-8", "surrogatepass"))


@BOUNDED
@given(st.lists(st.lists(HOSTILE_CELL, max_size=8), max_size=12))
def test_rows_of_hostile_cells_are_lines_or_row_errors(rows: list[list[str]]) -> None:
    import csv
    import io

    out = io.StringIO()
    csv.writer(out).writerows([["order_id", "gross", "commission", "net", "settled_at"], *rows])
    check_result(out.getvalue().encode("utf-8", "surrogatepass"))


def valid_rows(n: int) -> st.SearchStrategy:
    gross = st.integers(min_value=-(10**13), max_value=10**13)
    commission = st.integers(min_value=0, max_value=10**13)
    when = st.one_of(st.none(), st.integers(min_value=0, max_value=4_102_444_800))  # to 2100
    return st.lists(st.tuples(gross, commission, when), min_size=1, max_size=n)


@BOUNDED
@given(
    valid_rows(12),
    st.booleans(),  # Chinese headers
    st.booleans(),  # thousands separators
    st.sampled_from(["utf-8", "utf-8-sig", "gb18030"]),
    st.sampled_from(["\n", "\r\n"]),
    st.lists(st.integers(min_value=0, max_value=12), max_size=4),  # comment lines before these rows
    st.sampled_from(["", "\t", " "]),  # padding of cells
)
def test_a_generated_file_round_trips_exactly_in_fen(
    rows: list, chinese: bool, thousands: bool, encoding: str, newline: str, comments: list[int], pad: str
) -> None:
    head = ["商户订单号", "收入金额（+元）", "服务费（元）", "实收金额", "入账时间", "备注"]
    out = [
        "#支付宝账务明细查询",
        ",".join(head if chinese else ["order_id", "gross", "commission", "net", "settled_at", "note"]),
    ]
    expected = []
    for i, (gross, commission, when) in enumerate(rows):
        out += ["# 小计"] * comments.count(i)
        net = gross - commission
        cells = [f"T{i:04d}", *(format_yuan(v, thousands=thousands) for v in (gross, commission, net))]
        cells = [f'"{c}"' if "," in c else c for c in cells]
        stamp = "" if when is None else dt.datetime.fromtimestamp(when, CHINA).strftime("%Y-%m-%d %H:%M:%S")
        out.append(",".join(c + pad for c in [*cells, stamp, "备注"]))
        expected.append((f"b1.{len(out)}", f"T{i:04d}", gross, commission, net, TS if when is None else when * 1000))
    data = (newline.join(out) + newline).encode(encoding)
    lines, errors = parse(data)
    assert errors == []
    assert [
        (ln.line_id, ln.platform_order_id, ln.gross_fen, ln.commission_fen, ln.net_fen, ln.ts) for ln in lines
    ] == expected


@BOUNDED
@given(valid_rows(8), st.data())
def test_a_mutated_line_spoils_only_itself(rows: list, data: st.DataObject) -> None:
    text = [HEAD.rstrip("\n")]
    for i, (gross, commission, _) in enumerate(rows):
        text.append(f"T{i:04d},{format_yuan(gross)},{format_yuan(commission)},{format_yuan(gross - commission)},")
    target = data.draw(st.integers(min_value=1, max_value=len(text) - 1), label="line")
    original = text[target]
    mutated = data.draw(
        st.one_of(
            st.text(max_size=200).map(lambda t: t.replace("\n", "").replace("\r", "")),
            st.integers(min_value=0, max_value=len(original)).flatmap(
                lambda at: st.text(max_size=20).map(lambda t: original[:at] + t + original[at + 1 :])
            ),
        ).filter(lambda t: "\n" not in t and "\r" not in t),
        label="mutated",
    )
    text[target] = mutated
    lines, errors = parse("\n".join(text) + "\n")
    others = {f"T{i:04d}" for i in range(len(rows)) if i + 1 != target and f"T{i:04d}" not in mutated}
    got = {ln.platform_order_id: ln for ln in lines}
    for i, (gross, commission, _) in enumerate(rows):
        if f"T{i:04d}" in others:
            assert got[f"T{i:04d}"].gross_fen == gross and got[f"T{i:04d}"].commission_fen == commission
            assert got[f"T{i:04d}"].line_id == f"b1.{i + 2}"
    assert all(e.row == target + 1 for e in errors), errors


# -- the books -----------------------------------------------------------------------------------------------


def voucher(kind: VoucherKind, order: str, source: str, lines: list[VoucherLine], **kw: object) -> Voucher:
    fields: dict = {
        "voucher_id": f"{kind.value}.t1.{source}",
        "tenant": "t1",
        "kind": kind,
        "source_id": source,
        "entity": order,
        "order_id": order,
        "channel": Channel.TMALL,
        "book_date": "2024-05-01",
        "lines": lines,
        "ts": TS,
    }
    fields.update(kw)
    return Voucher(**fields)


def revenue(order: str, gross: int, **kw: object) -> Voucher:
    return voucher(
        VoucherKind.REVENUE,
        order,
        f"gi-{order}",
        [
            VoucherLine(account="1122", name="应收账款", debit_fen=gross, sub="tmall"),
            VoucherLine(account="6001", name="主营业务收入", credit_fen=gross - gross * 13 // 113),
            VoucherLine(account="2221.02", name="销项税额", credit_fen=gross * 13 // 113),
        ],
        **kw,
    )


def settled(order: str, line_id: str, commission: int, net: int) -> list[Voucher]:
    return [
        voucher(
            VoucherKind.COMMISSION,
            order,
            line_id,
            [
                VoucherLine(account="6601.01", name="平台佣金", debit_fen=commission),
                VoucherLine(account="1122", name="应收账款", credit_fen=commission),
            ],
        ),
        voucher(
            VoucherKind.PAYOUT,
            order,
            line_id,
            [
                VoucherLine(account="1012", name="平台账户", debit_fen=net),
                VoucherLine(account="1122", name="应收账款", credit_fen=net),
            ],
        ),
    ]


def books() -> list[Voucher]:
    refund = voucher(
        VoucherKind.RETURN_REVENUE,
        "tmall-s1-A3",
        "ret-1",
        [
            VoucherLine(account="6001", name="主营业务收入", debit_fen=885),
            VoucherLine(account="2221.02", name="销项税额", debit_fen=115),
            VoucherLine(account="1122", name="应收账款", credit_fen=1000),
        ],
    )
    return [
        revenue("tmall-s1-A1", 12900),  # settled below: nothing open
        *settled("tmall-s1-A1", "b0.2", 645, 12255),
        revenue("tmall-s1-A2", 5000),  # open 5000
        revenue("tmall-s1-A3", 3000),
        refund,  # open 2000
        revenue("tmall-s1-A3", 3000),  # the same voucher read twice counts once
        revenue("tmall-s1-A4", 1000),
        voucher(
            VoucherKind.RETURN_REVENUE,
            "tmall-s1-A4",
            "ret-2",
            [
                VoucherLine(account="6001", name="主营业务收入", debit_fen=1000),
                VoucherLine(account="1122", name="应收账款", credit_fen=1000),
            ],
        ),  # refunded in full: 0
        revenue("tmall-s2-B1", 700),  # another shop
        revenue("jd-s1-J1", 900, channel=Channel.JD),  # another channel
        revenue("tmall-s1-X1", 800, tenant="t2", voucher_id="revenue.t2.gi-x"),  # another tenant
    ]


def test_open_receivables_are_debits_minus_credits_on_the_receivable_account_per_order() -> None:
    assert receivables_from_vouchers(books(), "t1", "tmall") == {
        "tmall-s1-A1": 0,
        "tmall-s1-A2": 5000,
        "tmall-s1-A3": 2000,
        "tmall-s1-A4": 0,
        "tmall-s2-B1": 700,
    }
    assert receivables_from_vouchers(books(), "t1", Channel.JD) == {"jd-s1-J1": 900}
    assert receivables_from_vouchers(books(), "t1", "tmall", receivable_code="9999") == {}


def test_missing_in_file_are_the_open_receivables_the_file_does_not_mention() -> None:
    open_fen = receivables_from_vouchers(books(), "t1", "tmall")
    missing = missing_in_file(open_fen, {"tmall-s1-A3"}, tenant="t1", channel="tmall", batch_id="b1", ts=TS)
    assert [(r.order_id, r.book_receivable_fen) for r in missing] == [("tmall-s1-A2", 5000), ("tmall-s2-B1", 700)]
    first = missing[0]
    assert first.status is ReconStatus.MISSING_IN_FILE
    assert first.result_id == "recon.t1.b1.tmall-s1-A2" and first.key == "t1:tmall-s1-A2"
    assert first.file_gross_fen is None and first.channel is Channel.TMALL
    assert wire.decode(wire.encode(first), Reconciliation) == first
    # narrowed to the shops the file covers
    only_s1 = missing_in_file(open_fen, set(), tenant="t1", channel="tmall", batch_id="b1", ts=TS, shops={"s1"})
    assert [r.order_id for r in only_s1] == ["tmall-s1-A2", "tmall-s1-A3"]


def result(
    order: str, status: ReconStatus, gross: int | None, books_fen: int | None, commission: int = 0
) -> Reconciliation:
    return Reconciliation(
        result_id=f"recon.t1.b1.{order}",
        batch_id="b1",
        tenant="t1",
        order_id=order,
        channel=Channel.TMALL,
        status=status,
        file_gross_fen=gross,
        book_receivable_fen=books_fen,
        commission_fen=commission,
        net_fen=(gross or 0) - commission,
        ts=TS,
    )


def test_the_summary_counts_and_sums_per_status_and_the_report_lists_the_problems() -> None:
    results = [
        result("tmall-s1-A1", ReconStatus.MATCHED, 12900, 12900, 645),
        result("tmall-s1-A5", ReconStatus.MATCHED, 100, 100, 5),
        result("tmall-s1-A2", ReconStatus.AMOUNT_MISMATCH, 4000, 5000, 200),
        result("tmall-s1-Z9", ReconStatus.MISSING_IN_BOOKS, 300, None),
        result("tmall-s1-A3", ReconStatus.MISSING_IN_FILE, None, 2000),
    ]
    summary = summarize(results)
    assert summary["results"] == 5
    by = summary["by_status"]
    assert list(by) == [s.value for s in ReconStatus]
    assert by["matched"] == {
        "count": 2,
        "file_gross_fen": 13000,
        "book_receivable_fen": 13000,
        "commission_fen": 650,
        "net_fen": 12350,
    }
    assert by["missing_in_file"]["book_receivable_fen"] == 2000 and by["duplicate"]["count"] == 0
    assert msgspec.json.decode(msgspec.json.encode(summary)) == summary  # JSON as is

    errors = [RowError(3, "bad_amount", "gross: not an amount in yuan: 'ten'", "A2")]
    text = report_text(results, errors)
    assert "130.00" in text and "row 3 (A2): bad_amount" in text
    assert "tmall-s1-A2: amount_mismatch (file 40.00, books 50.00)" in text
    assert "tmall-s1-A1:" not in text  # matched lines are not problems
    many = report_text(results, [RowError(n, "bad_amount", "x") for n in range(2, 40)], limit=20)
    assert "first 20" in many and "row 21:" in many and "row 22:" not in many


# -- oms settle's I/O, with the broker faked -------------------------------------------------------------------


class FakeKafka:
    """The topics ``oms settle`` touches, and a ledger that answers every line it is sent (matched when the
    file's gross is the open receivable, else amount mismatch), in the same transaction as its vouchers."""

    def __init__(self, vouchers: list[Voucher], answer: bool = True) -> None:
        from engine.topics import Topics

        self.topics = Topics("oms")
        self.vouchers = list(vouchers)
        self.answer = answer
        self.inbox: list[tuple[bytes, SettlementLine]] = []
        self.results: list[Reconciliation] = []
        self.transactions: list[str] = []

    def publish(self, _settings: object, publisher: str, copies: list, latest: list) -> None:
        assert copies == []
        self.transactions.append(publisher)
        for topic, key, value in latest:
            if topic == self.topics.ledger_inbox:
                line = wire.decode(value, SettlementLine)
                assert key == line.key.encode()
                self.inbox.append((key, line))
                if self.answer:
                    self._book(line)
            else:
                assert topic == self.topics.reconciliations
                self.results.append(wire.decode(value, Reconciliation))

    def _book(self, line: SettlementLine) -> None:
        open_fen = receivables_from_vouchers(self.vouchers, line.tenant, line.channel).get(line.order_id)
        status = (
            ReconStatus.MISSING_IN_BOOKS
            if open_fen is None
            else ReconStatus.MATCHED
            if open_fen == line.gross_fen
            else ReconStatus.AMOUNT_MISMATCH
        )
        if status is ReconStatus.MATCHED:
            self.vouchers += settled(line.order_id, line.line_id, line.commission_fen, line.net_fen)
        self.results.append(
            Reconciliation(
                result_id=f"recon.{line.tenant}.{line.batch_id}.{line.order_id}",
                batch_id=line.batch_id,
                tenant=line.tenant,
                order_id=line.order_id,
                platform_order_id=line.platform_order_id,
                channel=line.channel,
                status=status,
                file_gross_fen=line.gross_fen,
                book_receivable_fen=open_fen,
                commission_fen=line.commission_fen,
                net_fen=line.net_fen,
                ts=line.ts,
            )
        )

    def tail(self, _bootstrap: str, topics: list[str], on_message, stop) -> None:  # type: ignore[no-untyped-def]
        from engine.kafka.clients import Message

        assert topics == [self.topics.reconciliations]
        for i, r in enumerate(self.results):
            on_message(Message(topics[0], 0, i, r.key.encode(), wire.encode(r), TS))
        while not stop():
            pass

    def read_topics(self, _bootstrap: str, topics: list[str], timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
        from engine.kafka.clients import Message

        assert topics == [self.topics.vouchers]
        for i, v in enumerate(self.vouchers):
            yield Message(topics[0], 0, i, v.key.encode(), wire.encode(v), TS)

    def admin(self, _bootstrap: str, quiet: bool = False) -> object:
        names = {t: None for t in self.topics.all()}

        class Admin:
            def list_topics(self, timeout: float) -> object:
                return type("Md", (), {"topics": names})()

        return Admin()


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> FakeKafka:
    import agents.ledger.reconcile as rc

    kafka = FakeKafka([v for v in books() if v.tenant == "t1"])
    monkeypatch.setattr(rc.broadcast, "publish", kafka.publish)
    monkeypatch.setattr(rc, "tail", kafka.tail)
    monkeypatch.setattr(rc, "read_topics", kafka.read_topics)
    monkeypatch.setattr(rc, "admin", kafka.admin)
    return kafka


SETTLE_FILE = """商户订单号,收入金额（+元）,服务费（元）,实收金额,入账时间
A2,50.00,2.50,47.50,2024-05-01 10:00:00
A3,25.00,1.00,24.00,2024-05-01 10:00:00
Z9,3.00,0,3.00,2024-05-01 10:00:00
A5,1.00,0,2.00,2024-05-01 10:00:00
"""


def run_settle(tmp_path, capsys, **kw: object) -> tuple[int, dict, str]:  # type: ignore[no-untyped-def]
    import json

    from agents.ledger.reconcile import SettleOptions, settle
    from engine.settings import Settings

    path = tmp_path / "settle.csv"
    if not path.exists():
        path.write_text(SETTLE_FILE, encoding="utf-8")
    out = tmp_path / "report.json"
    opts = SettleOptions(file=path, tenant="t1", channel="tmall", shop="s1", wait_s=0.2, out=out, **kw)  # type: ignore[arg-type]
    code = settle(Settings.from_env({}), opts)
    printed = capsys.readouterr()
    return code, json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}, printed.out + printed.err


def test_oms_settle_publishes_one_transaction_waits_for_the_answers_and_adds_missing_in_file(
    fake_kafka: FakeKafka,
    tmp_path,  # type: ignore[no-untyped-def]
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    fake_kafka.vouchers.append(revenue("tmall-s1-A6", 600))
    code, report, printed = run_settle(tmp_path, capsys)
    assert code == 0
    batch = report["batch_id"]
    assert batch.startswith("stl-") and report["complete"] is True
    assert [line.line_id for _, line in fake_kafka.inbox] == [f"{batch}.2", f"{batch}.3", f"{batch}.4"]
    assert fake_kafka.transactions == [f"settle.{batch}", f"settle.{batch}"]  # the lines, then missing_in_file
    assert {r["order_id"]: r["status"] for r in report["results"]} == {
        "tmall-s1-A2": "matched",
        "tmall-s1-A3": "amount_mismatch",  # 25.00 against 20.00 open
        "tmall-s1-Z9": "missing_in_books",
        "tmall-s1-A6": "missing_in_file",  # s1's open receivables not in the file (s2's B1 is not this file's)
    }
    published = [r for r in fake_kafka.results if r.status is ReconStatus.MISSING_IN_FILE]
    assert [(r.order_id, r.batch_id, r.book_receivable_fen) for r in published] == [("tmall-s1-A6", batch, 600)]
    assert report["row_errors"][0]["row"] == 5 and report["row_errors"][0]["reason"] == "net_mismatch"
    assert report["summary"]["by_status"]["matched"]["count"] == 1
    assert "row 5 (A5): net_mismatch" in printed and "reconciled 3/3" in printed

    # the same file again: the same batch, the ledger's answers already there
    again, report2, _ = run_settle(tmp_path, capsys)
    assert again == 0 and report2["batch_id"] == batch


def test_oms_settle_exits_1_when_the_ledger_does_not_answer_and_publishes_no_missing_in_file(
    fake_kafka: FakeKafka,
    tmp_path,  # type: ignore[no-untyped-def]
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    fake_kafka.answer = False
    code, report, printed = run_settle(tmp_path, capsys)
    assert code == 1 and report["complete"] is False
    assert len(fake_kafka.transactions) == 1 and fake_kafka.results == []
    assert "answered 0 of 3" in printed


def test_oms_settle_exits_2_when_the_file_cannot_be_used(
    fake_kafka: FakeKafka,
    tmp_path,  # type: ignore[no-untyped-def]
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "settle.csv").write_text("order_id,gross,net\nA1,1.00,1.00\n", encoding="utf-8")
    code, report, printed = run_settle(tmp_path, capsys)
    assert code == 2 and report == {} and "missing column" in printed and fake_kafka.transactions == []
    (tmp_path / "settle.csv").unlink()
    (tmp_path / "settle.csv").mkdir()
    code, _, printed = run_settle(tmp_path, capsys)
    assert code == 2 and "cannot read" in printed
