"""Layout files (agents.fulfilment.layout): hostile TOML and bins CSV files are LayoutFileErrors naming their
place, never another exception; ``bins_csv`` stays inside the layout file's folder; generated files round-trip.

The happy path and "every problem at once" are in test_fulfilment_rules.py."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.fulfilment.layout import (
    BIN_COLUMNS,
    MAX_BINS_CSV_BYTES,
    MAX_BINS_CSV_LINES,
    MAX_DEPTH,
    MAX_LAYOUT_BYTES,
    MAX_PROBLEMS,
    LayoutFileError,
    layouts_from_toml,
    load_layouts,
)
from schemas.fulfilment import BinSpec, Layout

BOUNDED = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def layout_toml(bins_csv: str | None = "bins.csv", inline_bins: str = "", tenant: str = "acme") -> str:
    csv_key = "" if bins_csv is None else f"bins_csv = {bins_csv!r}\n"
    return f"""
[[layouts]]
tenant = "{tenant}"
version = 1

[[layouts.carriers]]
carrier = "sf"

[[layouts.warehouses]]
warehouse = "WH-SH"
carriers = ["sf"]
zones = [{{ zone = "A", aisles = 12, pitch_cm = 300, length_cm = 3000 }}]
{csv_key}{inline_bins}
"""


GOOD_ROWS = [
    ("WH-SH", "WH-SH-A01-01-1", "SKU-1", "A", "1", "1", "1", "50"),
    ("WH-SH", "WH-SH-A02-03-2", "SKU-2", "A", "2", "3", "2", "250"),
    ("WH-GZ", "WH-GZ-A01-01-1", "SKU-1", "A", "1", "1", "1", "50"),  # another warehouse's: not WH-SH's
]


def csv_text(rows: list[tuple[str, ...]] | list[str], header: str = ",".join(BIN_COLUMNS)) -> str:
    lines = [header] + [r if isinstance(r, str) else ",".join(r) for r in rows]
    return "\n".join(lines) + "\n"


def write(folder: Path, toml: str, bins: str | bytes | None = None, name: str = "bins.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "layout.toml").write_text(toml, encoding="utf-8")
    if bins is not None:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(bins, bytes):
            target.write_bytes(bins)
        else:
            target.write_text(bins, encoding="utf-8")
    return folder / "layout.toml"


def problem(path: Path) -> str:
    with pytest.raises(LayoutFileError) as caught:
        load_layouts(path)
    message = str(caught.value)
    assert str(path) in message  # the file is always named
    return message


# -- the good file -------------------------------------------------------------------------------------------------


def test_bins_from_a_csv_in_the_layout_folder_join_the_inline_ones(tmp_path: Path) -> None:
    inline = '\n[[layouts.warehouses.bins]]\nbin = "WH-SH-A05-01-1"\nsku = "SKU-3"\nzone = "A"\naisle = 5\nbay = 1\n'
    inline += "depth_cm = 50\n"
    path = write(tmp_path, layout_toml(inline_bins=inline), "\ufeff" + csv_text(GOOD_ROWS).replace("\n", "\r\n"))
    (found,) = load_layouts(path)
    bins = found.warehouses[0].bins
    assert [(b.bin, b.sku, b.aisle, b.bay, b.level, b.depth_cm) for b in bins] == [
        ("WH-SH-A05-01-1", "SKU-3", 5, 1, 1, 50),
        ("WH-SH-A01-01-1", "SKU-1", 1, 1, 1, 50),
        ("WH-SH-A02-03-2", "SKU-2", 2, 3, 2, 250),
    ]
    # a subfolder, and a path that wanders but ends inside the folder, are inside it
    sub = write(tmp_path / "sub", layout_toml("data/../data/bins.csv"), csv_text(GOOD_ROWS), "data/bins.csv")
    assert len(load_layouts(sub)[0].warehouses[0].bins) == 2


# -- where bins_csv may point --------------------------------------------------------------------------------------


def test_bins_csv_outside_the_layout_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text(csv_text(GOOD_ROWS), encoding="utf-8")
    folder = tmp_path / "layouts"
    for name, why in [
        ("../secret.csv", "leads outside the layout file's folder"),
        ("sub/../../secret.csv", "leads outside"),
        (str(outside), "absolute path"),
        ("/etc/passwd", "absolute path"),
        ("../../../../../../../../etc/passwd", "leads outside"),
    ]:
        message = problem(write(folder, layout_toml(name)))
        assert why in message and "layouts[0] (acme): warehouses[0].bins_csv" in message, message
        assert "SKU-1" not in message and "root:" not in message  # nothing of the file is read or shown


def test_a_symlink_leading_out_of_the_folder_is_refused_and_one_staying_inside_is_followed(tmp_path: Path) -> None:
    (tmp_path / "secret.csv").write_text(csv_text(GOOD_ROWS), encoding="utf-8")
    folder = tmp_path / "layouts"
    path = write(folder, layout_toml("bins.csv"))
    (folder / "bins.csv").symlink_to(tmp_path / "secret.csv")
    assert "leads outside" in problem(path)
    (folder / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    assert "leads outside" in problem(write(folder, layout_toml("dir-link/secret.csv")))
    (folder / "real.csv").write_text(csv_text(GOOD_ROWS), encoding="utf-8")
    (folder / "inside.csv").symlink_to(folder / "real.csv")
    assert len(load_layouts(write(folder, layout_toml("inside.csv")))[0].warehouses[0].bins) == 2
    (folder / "loop1").symlink_to(folder / "loop2")
    (folder / "loop2").symlink_to(folder / "loop1")
    assert "bins_csv" in problem(write(folder, layout_toml("loop1")))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("42", "a file name (text) expected"),
        ('["a.csv"]', "a file name (text) expected"),
        ('{ path = "a.csv" }', "a file name (text) expected"),
        ('""', "a file name (text) expected"),
        ('"a\\u0000b.csv"', "not a usable file name"),
        ('"missing.csv"', "no such file"),
        ('"."', "not a regular file"),
        ('"sub"', "not a regular file"),
    ],
)
def test_a_bins_csv_that_is_not_a_file_name_or_not_a_file_is_a_layout_error(
    tmp_path: Path, value: str, why: str
) -> None:
    (tmp_path / "sub").mkdir()
    toml = layout_toml(None).replace('carriers = ["sf"]\n', f'carriers = ["sf"]\nbins_csv = {value}\n', 1)
    message = problem(write(tmp_path, toml))
    assert why in message and "warehouses[0].bins_csv" in message, message


def test_a_fifo_as_bins_csv_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "bins.csv")
    assert "not a regular file" in problem(write(tmp_path, layout_toml()))


# -- hostile bins CSVs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ("WH-SH,B1,SKU-1,A,１,1,1,50", "aisle '１'"),  # full-width
        ("WH-SH,B1,SKU-1,A,1,١,1,50", "bay '١'"),  # Arabic-Indic
        ("WH-SH,B1,SKU-1,A,1,1,²,50", "level '²'"),  # superscript
        ("WH-SH,B1,SKU-1,A,1,1,1,-50", "depth_cm '-50'"),
        ("WH-SH,B1,SKU-1,A,1,1,1,5_0", "depth_cm '5_0'"),
        ("WH-SH,B1,SKU-1,A,1,1,1,", "depth_cm ''"),
        ("WH-SH,B1,SKU-1,A,1,1,1," + "9" * 3000, "depth_cm '9999"),
        ("WH-SH,B1,SKU-1,A,1,1,1,1e3", "depth_cm '1e3'"),
        ("WH-SH,B1,SKU-1,A,1,1", "6 cells, the header has 8"),  # was a TypeError
        ("WH-SH,B1,SKU-1,A,1,1,1,50,extra", "9 cells, the header has 8"),
        ("WH-SH,B1,SKU-1,A,501,1,1,50", "<= 500"),  # the schema's range, with the CSV line
        ("WH-SH,B:1,SKU-1,A,1,1,1,50", "$.bin"),
        ('WH-SH,"B1,SKU-1,A,1,1,1,50', "2 cells"),  # a stray quote spoils its own line only
        ("WH-SH,B1,SKU-1\x00,A,1,1,1,50", "NUL"),
        ("WH-SH,B1," + "S" * 5000 + ",A,1,1,1,50", "characters (at most 4,096)"),
    ],
)
def test_a_bad_csv_row_is_a_layout_error_naming_the_csv_and_its_line(tmp_path: Path, row: str, why: str) -> None:
    path = write(tmp_path, layout_toml(), csv_text([GOOD_ROWS[0], row, GOOD_ROWS[1]]))
    message = problem(path)
    assert "'bins.csv' line 3:" in message and why in message, message
    assert "line 2" not in message and "line 4" not in message  # the good rows are not problems
    assert len(message) < 1000


def test_a_csv_that_is_not_a_bins_csv_is_a_layout_error(tmp_path: Path) -> None:
    cases: list[tuple[bytes, str]] = [
        (csv_text(GOOD_ROWS, header="wh,bin,sku,zone,aisle,bay,level,depth").encode(), "line 1: the header must be"),
        (b"warehouse;bin;sku\n", "the header must be"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1: not UTF-8 text"),
        (csv_text(GOOD_ROWS).encode() + "WH-SH,B9,货号,A,1,1,1,50\n".encode("gbk"), "line 5: not UTF-8 text"),
        (b"\x00" * 64, "line 1: a NUL byte"),
        (b"x" * 10_000, "line 1: 10,000 characters"),
    ]
    for data, why in cases:
        message = problem(write(tmp_path, layout_toml(), data))
        assert why in message, message


def test_an_empty_csv_or_one_with_only_a_header_gives_no_bins(tmp_path: Path) -> None:
    for data in ("", csv_text([]), "\n\n"):
        (found,) = load_layouts(write(tmp_path, layout_toml(), data))
        assert found.warehouses[0].bins == []


def test_a_csv_over_its_size_limits_is_a_layout_error(tmp_path: Path) -> None:
    path = write(tmp_path, layout_toml())
    with (tmp_path / "bins.csv").open("wb") as f:
        f.truncate(MAX_BINS_CSV_BYTES + 1)  # sparse
    assert "over 32 MiB" in problem(path)
    (tmp_path / "bins.csv").write_text(csv_text([]) + "\n" * MAX_BINS_CSV_LINES, encoding="utf-8")
    assert "more than 200,000 lines" in problem(path)


def test_many_bad_rows_are_listed_up_to_a_limit(tmp_path: Path) -> None:
    rows = [f"WH-SH,B{n},SKU-1,A,x,1,1,50" for n in range(500)]
    message = problem(write(tmp_path, layout_toml(), csv_text(rows)))
    assert message.count("whole numbers in ASCII digits") <= MAX_PROBLEMS + 1
    assert "more" in message and len(message) < 20_000


# -- hostile TOML --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "why"),
    [
        ("a = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("a = " + "{b=" * 5000 + "1" + "}" * 5000, "nested too deeply"),
        ("a = " + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2), "nested more than 16 levels deep"),
        ("[" + ".".join(["t"] * 5000) + "]\nx = 1\n", "nested more than 16 levels deep"),
        ("version = " + "9" * 5000, "digits"),
        ("layouts = 3", "no [[layouts]] tables"),
        ("", "no [[layouts]] tables"),
        ("[[layout]]\ntenant = 'acme'\n", "no [[layouts]] tables"),
        ("layouts = [1, 'x']", "layouts[0]: a table expected, not an integer"),
        ("[[layouts]]\ntenant = 'acme'\nversion = 1\nwarehouses = 'WH'\n", "$.warehouses"),
        ("[[layouts]]\ntenant = 'acme'\nversion = 1\nwarehouses = [1, 2]\n", "$.warehouses[0]"),
        ("[[layouts]]\ntenant = 5\nversion = 1\nwarehouses = []\n", "layouts[0] (?): Expected `str`"),
        ("[[layouts]]\ntenant = 'acme'\nversion = 1979-05-27\nwarehouses = []\n", "$.version"),
        ("[[layouts]]\ntenant = 'acme'\nversion = 1.5\nwarehouses = []\n", "$.version"),
        ("[[layouts]]\ntenant = 'acme'\nversion = 1\nwarehouses = [{ warehouse = 'W', bins = 'x' }]\n", "bins"),
        ("[[layouts]]\ntenant = 'acme'\nversion = 1\n\x00\n", "line 4"),
        ("a = 1\na = 2\n", "line 2"),
    ],
)
def test_a_hostile_layout_file_is_a_layout_error_with_its_place(tmp_path: Path, toml: str, why: str) -> None:
    message = problem(write(tmp_path, toml))
    assert why in message, message
    assert len(message) < 2000


def test_a_layout_file_that_is_not_utf8_too_big_or_not_a_file_is_a_layout_error(tmp_path: Path) -> None:
    path = tmp_path / "layout.toml"
    good = layout_toml(None)
    path.write_bytes(good.encode() + "\n# 注释\n".encode("gbk"))
    assert f"line {good.count(chr(10)) + 2}: not UTF-8" in problem(path)
    with path.open("wb") as f:
        f.truncate(MAX_LAYOUT_BYTES + 1)
    assert "over 8 MiB" in problem(path)
    assert "not a regular file" in problem(tmp_path)
    assert "no such file" in problem(tmp_path / "nope.toml")


# -- properties ----------------------------------------------------------------------------------------------------

TOML_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.dates()
    | st.datetimes()
    | st.times(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=40,
)
LAYOUT_KEYS = st.sampled_from(
    ["tenant", "version", "warehouses", "carriers", "allocation", "waves", "bins_csv", "bins", "zones", "warehouse"]
)


def layout_like() -> st.SearchStrategy:
    """Tables shaped like a layout file, with any values where the fields go."""
    warehouse = st.dictionaries(LAYOUT_KEYS, TOML_VALUES | st.sampled_from(["bins.csv", "../x", "/etc/hosts"]))
    table = st.fixed_dictionaries(
        {"tenant": st.sampled_from(["acme", "", "a" * 50]) | TOML_VALUES, "version": st.integers() | TOML_VALUES},
        optional={"warehouses": st.lists(warehouse, max_size=3) | TOML_VALUES},
    )
    return st.fixed_dictionaries({"layouts": st.lists(table | TOML_VALUES, max_size=3) | TOML_VALUES})


def loads_or_layout_error(call) -> None:  # type: ignore[no-untyped-def]
    try:
        found = call()
    except LayoutFileError as exc:
        assert str(exc)
        return
    assert isinstance(found, list) and all(isinstance(x, Layout) for x in found)


@BOUNDED
@given(st.one_of(TOML_VALUES, layout_like()))
def test_any_parsed_document_is_layouts_or_a_layout_error(tmp_path: Path, raw: object) -> None:
    (tmp_path / "bins.csv").write_text(csv_text(GOOD_ROWS), encoding="utf-8")
    loads_or_layout_error(lambda: layouts_from_toml(raw, tmp_path / "layout.toml"))


@BOUNDED
@given(st.text(max_size=800) | st.binary(max_size=800).map(lambda b: b.decode("latin-1")))
def test_any_text_as_a_layout_file_is_layouts_or_a_layout_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "layout.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    loads_or_layout_error(lambda: load_layouts(path))


@BOUNDED
@given(st.binary(max_size=1500) | st.text(max_size=1500).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_as_the_bins_csv_are_layouts_or_a_layout_error(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, layout_toml(), data)
    loads_or_layout_error(lambda: load_layouts(path))
    path = write(tmp_path, layout_toml(), csv_text(GOOD_ROWS).encode() + data)
    loads_or_layout_error(lambda: load_layouts(path))


@BOUNDED
@given(st.data())
def test_a_mutated_layout_file_is_layouts_or_a_layout_error(tmp_path: Path, data: st.DataObject) -> None:
    text = layout_toml(inline_bins='bins = [{ bin = "B9", sku = "S", zone = "A", aisle = 1, bay = 1, depth_cm = 5 }]')
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        at = data.draw(st.integers(min_value=0, max_value=len(text)), label="at")
        cut = data.draw(st.integers(min_value=0, max_value=5), label="cut")
        text = text[:at] + data.draw(st.text(max_size=8), label="insert") + text[at + cut :]
    path = write(tmp_path, text, csv_text(GOOD_ROWS))
    loads_or_layout_error(lambda: load_layouts(path))


BIN_ROWS = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.#-]{0,20}", fullmatch=True).filter(lambda s: ".." not in s),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True),
        st.integers(min_value=1, max_value=12),  # aisle, within zone A
        st.integers(min_value=1, max_value=10_000),  # bay
        st.integers(min_value=1, max_value=50),  # level
        st.integers(min_value=0, max_value=3000),  # depth_cm, within the zone's length
    ),
    max_size=30,
    unique_by=lambda r: r[0],
)


@BOUNDED
@given(BIN_ROWS, BIN_ROWS, st.booleans(), st.sampled_from(["\n", "\r\n"]))
def test_generated_bins_round_trip_through_the_csv(
    tmp_path: Path, mine: list, others: list, bom: bool, newline: str
) -> None:
    rows = [("WH-SH", b, s, "A", str(a), str(bay), str(lv), str(d)) for b, s, a, bay, lv, d in mine]
    rows += [("WH-GZ", b, s, "A", str(a), str(bay), str(lv), str(d)) for b, s, a, bay, lv, d in others]
    text = ("\ufeff" if bom else "") + csv_text(rows).replace("\n", newline)
    (found,) = load_layouts(write(tmp_path, layout_toml(), text))
    expected = [BinSpec(bin=b, sku=s, zone="A", aisle=a, bay=bay, level=lv, depth_cm=d) for b, s, a, bay, lv, d in mine]
    assert found.warehouses[0].bins == expected


def test_the_example_dates_in_toml_are_refused_where_numbers_go(tmp_path: Path) -> None:
    raw = {"layouts": [{"tenant": "acme", "version": dt.date(2024, 5, 1), "warehouses": []}]}
    with pytest.raises(LayoutFileError, match=r"layouts\[0\] \(acme\).*\$\.version"):
        layouts_from_toml(raw, tmp_path / "layout.toml")
