"""Shipping labels (电子面单打印): one printable page per parcel, a 100 × 150 mm thermal label as PDF.

The label carries the carrier, the waybill number as a Code 128 barcode and in text, the sender, the receiver
**masked** (隐私面单: the name's first character, the phone's first three and last four digits, the address to
the district) and the orders in the parcel. ReportLab draws it — a PDF library maintained since 2000 that has
Code 128 built in — in invariant mode, so the same parcel always gives the same bytes (a reprint is identical,
and a test can compare it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from reportlab.graphics.barcode import code128
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from engine.kafka.clients import read_topics
from engine.topics import Topics
from schemas import wire
from schemas.fulfilment import ShipmentPicked
from schemas.order import Address
from schemas.shipping import ShipmentShipped

LABEL_SIZE = (100 * mm, 150 * mm)
FONT = "STSong-Light"  # a CID font every PDF reader has for Chinese text: nothing to embed


@dataclass(frozen=True)
class Label:
    carrier: str
    waybill: str
    sender_name: str
    sender_phone: str
    sender_address: str
    receiver: Address
    order_ids: tuple[str, ...]
    parcel: str  # e.g. "1/2" for the first of two parcels of a shipment


def mask_name(name: str) -> str:
    name = name.strip()
    return name[:1] + "*" * max(1, len(name) - 1) if name else ""


def mask_phone(phone: str) -> str:
    digits = "".join(c for c in phone if c.isdigit())
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"


def masked_address(receiver: Address) -> str:
    """Province, city and district only: the street stays with the carrier's system, not on the parcel."""
    return " ".join(p for p in (receiver.province, receiver.city, receiver.district) if p) + " ***"


def render(label: Label) -> bytes:
    """The label as a one-page PDF (deterministic bytes for the same label)."""
    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(FONT))
    out = io.BytesIO()
    width, height = LABEL_SIZE
    page = canvas.Canvas(out, pagesize=LABEL_SIZE, invariant=1, pageCompression=0)
    page.setTitle(f"{label.carrier} {label.waybill}")
    page.setFont(FONT, 14)
    page.drawString(6 * mm, height - 12 * mm, f"{label.carrier.upper()}  {label.parcel}")
    barcode = code128.Code128(label.waybill, barHeight=22 * mm, barWidth=0.42 * mm, humanReadable=True)
    barcode.drawOn(page, max(2 * mm, (width - barcode.width) / 2), height - 42 * mm)
    lines = [
        (11, f"收 {mask_name(label.receiver.name)}  {mask_phone(label.receiver.phone)}"),
        (10, masked_address(label.receiver)),
        (9, f"寄 {label.sender_name}  {label.sender_phone}"),
        (9, label.sender_address),
        (8, "订单 " + ", ".join(label.order_ids[:4]) + (" …" if len(label.order_ids) > 4 else "")),
        (8, f"运单号 {label.waybill}"),
    ]
    y = height - 56 * mm
    for size, text in lines:
        page.setFont(FONT, size)
        page.drawString(6 * mm, y, text[:60])
        y -= (size + 5) * 0.3528 * mm * 2.2
    page.showPage()
    page.save()
    return out.getvalue()


def labels_of(shipped: ShipmentShipped, receiver: Address) -> list[Label]:
    """The labels of a shipped shipment, one per parcel, in parcel order (the warehouse is the sender)."""
    count = len(shipped.parcels)
    return [
        Label(
            carrier=parcel.carrier,
            waybill=parcel.waybill,
            sender_name=shipped.warehouse,
            sender_phone="",
            sender_address=shipped.warehouse,
            receiver=receiver,
            order_ids=tuple(sorted({ln.order_id for ln in parcel.lines})),
            parcel=f"{i + 1}/{count}",
        )
        for i, parcel in enumerate(shipped.parcels)
    ]


def print_labels(
    bootstrap: str, topics: Topics, out_dir: Path, shipment_ids: set[str] | None = None, limit: int = 100
) -> list[Path]:
    """Render the labels of shipped shipments (``shipment_ids``, or the first ``limit``) from the result topics
    into ``out_dir/<shipment>/<parcel>.pdf``. The receiver comes from the picked shipment."""
    receivers: dict[str, Address] = {}
    shipped: dict[str, ShipmentShipped] = {}
    for msg in read_topics(bootstrap, [topics.picked_shipments, topics.shipped]):
        if msg.topic == topics.picked_shipments:
            picked = wire.decode(msg.value, ShipmentPicked)
            if picked.receiver is not None:
                receivers[picked.shipment_id] = picked.receiver
        else:
            done = wire.decode(msg.value, ShipmentShipped)
            if shipment_ids is None or done.shipment_id in shipment_ids:
                shipped.setdefault(done.shipment_id, done)
    written = []
    for shipment_id in sorted(shipped)[: None if shipment_ids else limit]:
        receiver = receivers.get(shipment_id)
        if receiver is None:
            continue
        folder = out_dir / shipment_id.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for parcel, label in zip(shipped[shipment_id].parcels, labels_of(shipped[shipment_id], receiver), strict=True):
            path = folder / f"{parcel.parcel_id.replace('/', '_')}.pdf"
            path.write_bytes(render(label))
            written.append(path)
    return written
