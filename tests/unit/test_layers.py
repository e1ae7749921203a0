"""Which package may import which, read from the source (``ast``, nothing is imported).

* ``invariants/`` judges the engine: it states the rules it checks by itself (``invariants/contract.py``) and
  never imports the code it checks (``agents``), or it would agree with that code's bugs.
* ``engine/`` is the runtime every stage is built on: nothing in it imports a stage (``agents``), the workload
  that drives the engine (``workload``) or how it is deployed (``deploy``).

An import counts wherever it is written (at the top, inside a function, under ``TYPE_CHECKING``), as does
``importlib.import_module("…")`` / ``__import__("…")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved against its package under
    ``root``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            found.add(node.args[0].value)
    return found


def offenders(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """``<file> imports <module>`` for every import of a ``forbidden`` package by a module under ``package``."""
    modules = sorted((root / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    bad = []
    for path in modules:
        for name in sorted(imports_of(path, root)):
            if name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(root)} imports {name}")
    return bad


def test_the_reader_finds_every_kind_of_import(tmp_path: Path) -> None:
    """The check can fail: each way of writing an import is seen."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text(
        "import agents.orders\n"
        "from agents.ledger.costing import round_half_up\n"
        "from .. import sibling\n"
        "from . import near\n"
        "import importlib\n"
        "def f():\n"
        "    from workload import day\n"
        "    importlib.import_module('deploy.local')\n"
        "    __import__('agents')\n"
    )
    found = imports_of(pkg / "sub" / "mod.py", root=tmp_path)
    assert {
        "agents.orders",
        "agents.ledger.costing",
        "pkg",  # from .. import sibling
        "pkg.sub",  # from . import near
        "workload",
        "deploy.local",
        "agents",
    } <= found


def test_invariants_never_import_the_code_they_check() -> None:
    """The invariants restate the engine's rules (invariants/contract.py) instead of importing them from agents/:
    a check that imported the engine's rounding, retry limit or merge rule would agree with its bugs."""
    assert offenders("invariants", ("agents",)) == []


def test_the_engine_imports_no_stage_workload_or_deployment() -> None:
    assert offenders("engine", ("agents", "workload", "deploy")) == []


def test_the_restated_rules_agree_with_the_engine() -> None:
    """The restatements and the engine's rules say the same today: a change to either (a bug, or a contract that
    moved without the other) fails here, before an invariant passes a wrong engine or fails a right one."""
    from agents.aftersales.core import WRITEBACK_ATTEMPTS
    from agents.fulfilment.merge import address_digest
    from agents.ledger.costing import round_half_up
    from agents.tracking.core import PROGRESS
    from invariants import contract
    from schemas.order import Address

    replace = msgspec.structs.replace
    pairs = [(n, d) for n in range(-60, 61) for d in range(1, 13)] + [(10**12 + 5, 10), (-(10**12) - 5, 10)]
    assert [contract.round_half_up(n, d) for n, d in pairs] == [round_half_up(n, d) for n, d in pairs]
    assert (contract.round_half_up(5, 2), contract.round_half_up(-5, 2), contract.round_half_up(4, 3)) == (3, -3, 1)
    assert contract.outflow_value(3_000, 3, 3) == 3_000 and contract.outflow_value(1_000, 1, 3) == 333
    assert contract.outflow_value(0, 1, 0) == 0
    assert contract.outflow_value(220_000, 150, 200) == 165_000  # the README's worked example: ¥1,650.00
    assert contract.TRACKING_RANK == PROGRESS
    assert contract.WRITEBACK_ATTEMPTS == WRITEBACK_ATTEMPTS

    base = Address(name="李四", phone="139 0000 0000", province="浙江省", city="杭州市", street="文三路 90 号")
    variants = [
        base,
        replace(base, name=" 李四 ", phone="139  0000\t0000", street="文三路\u300090 号"),  # whitespace, 全角 space
        replace(base, phone="13900000000"),
        replace(base, street="文三路 91 号"),
        replace(base, postal_code="310012"),
        replace(base, name="Li Si", street="Wensan Rd 90"),
        replace(base, name="LI SI", street="WENSAN RD  90"),  # case
        replace(base, district="西湖区"),
        replace(base, country="HK"),
    ]
    for a in variants:
        for b in variants:
            same = contract.receiver_identity(a) == contract.receiver_identity(b)
            assert same == (address_digest(a) == address_digest(b)), (a, b)
