"""E-waybills (电子面单取号): numbers requested from carriers in batches, through one adapter interface.

A carrier issues waybill numbers; the engine asks for them per carrier and warehouse, in batches (Cainiao takes
at most 10 parcels per call). Each request names our parcel as ``object_id``, which is also the idempotency key:
asking again for a parcel — a retry after a timeout whose answer was lost, a replay — returns the number issued
the first time, never a second one. :func:`request_all` batches, retries failed and timed-out calls with the same
object ids, and reports per parcel a number or why not.

Adapters:

* :class:`CainiaoAdapter` builds ``cainiao.waybill.ii.get`` (云打印取号) requests — ``cp_code``, ``sender``,
  ``trade_order_info_dtos[]`` with ``object_id``, ``order_info``, ``package_info``, ``recipient``,
  ``template_url``, ``user_id`` — and reads ``modules[]`` (``object_id``, ``waybill_code``, ``print_data``,
  ``parent_waybill_code``) through a transport the deployment supplies (signing and HTTP are not ours);
* :class:`SimulatedCarrier`, the local carrier of the main job and the tests: numbers from a range per carrier
  and warehouse, and, when asked to, failures, timeouts after issuing, and a range that runs out. It also
  answers as Cainiao would, so the Cainiao adapter is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.shipping.labels import mask_name, mask_phone
from schemas.order import Address

CAINIAO_BATCH = 10
CAINIAO_METHOD = "cainiao.waybill.ii.get"


class WaybillTimeout(Exception):
    """The call's answer was lost: the carrier may or may not have issued numbers (retry with the same ids)."""


class WaybillUnavailable(Exception):
    """The carrier refused the call as a whole (down, throttled): nothing was issued."""


@dataclass(frozen=True)
class Party:
    name: str
    phone: str
    address: str


@dataclass(frozen=True)
class WaybillRequest:
    object_id: str  # our parcel id: one parcel, one number, however often it is asked for
    carrier: str
    warehouse: str
    sender: Party
    recipient: Address
    weight_g: int
    order_ids: tuple[str, ...]
    items: tuple[tuple[str, int], ...]  # (SKU, units)


@dataclass(frozen=True)
class WaybillResult:
    object_id: str
    waybill: str | None
    error: str | None = None  # why there is no number: range_exhausted, rejected: …, timeout, unavailable
    print_data: str = ""
    parent_waybill: str | None = None


class CarrierAdapter(Protocol):
    max_batch: int

    def apply(self, carrier: str, warehouse: str, requests: Sequence[WaybillRequest]) -> list[WaybillResult]:
        """Numbers for one batch (at most ``max_batch``), or WaybillTimeout / WaybillUnavailable."""
        ...


def request_all(
    adapter: CarrierAdapter, requests: Sequence[WaybillRequest], attempts: int = 3
) -> tuple[list[WaybillResult], int]:
    """Every parcel's number, per carrier and warehouse in batches; a failed or timed-out batch is asked again
    with the same object ids (so nothing is issued twice). Returns the results in request order and the number of
    retries made."""
    by_group: dict[tuple[str, str], list[WaybillRequest]] = {}
    for request in requests:
        by_group.setdefault((request.carrier, request.warehouse), []).append(request)
    found: dict[str, WaybillResult] = {}
    retries = 0
    for (carrier, warehouse), group in by_group.items():
        for start in range(0, len(group), adapter.max_batch):
            batch = group[start : start + adapter.max_batch]
            for attempt in range(attempts):
                try:
                    results = adapter.apply(carrier, warehouse, batch)
                except (WaybillTimeout, WaybillUnavailable) as exc:
                    if attempt + 1 == attempts:
                        reason = "timeout" if isinstance(exc, WaybillTimeout) else "unavailable"
                        results = [WaybillResult(r.object_id, None, reason) for r in batch]
                        break
                    retries += 1
                    continue
                break
            answered = {r.object_id: r for r in results}
            for request in batch:
                found[request.object_id] = answered.get(
                    request.object_id, WaybillResult(request.object_id, None, "rejected: not in the answer")
                )
    return [found[r.object_id] for r in requests], retries


# -- Cainiao ---------------------------------------------------------------------------------------------------
@dataclass
class CainiaoAdapter:
    """``cainiao.waybill.ii.get`` through ``transport(method, params) -> response`` (signed HTTP elsewhere)."""

    transport: Callable[[str, dict[str, Any]], dict[str, Any]]
    user_id: int
    template_url: str = "http://cloudprint.cainiao.com/template/standard/101"
    max_batch: int = CAINIAO_BATCH

    def request_body(self, carrier: str, requests: Sequence[WaybillRequest]) -> dict[str, Any]:
        if not 0 < len(requests) <= self.max_batch:
            raise ValueError(f"a Cainiao call takes 1 to {self.max_batch} parcels, not {len(requests)}")
        sender = requests[0].sender
        return {
            "cp_code": carrier,
            "sender": {"name": sender.name, "mobile": sender.phone, "address": {"detail": sender.address}},
            "trade_order_info_dtos": [
                {
                    "object_id": r.object_id,
                    "order_info": {"order_channels_type": "OTHERS", "trade_order_list": list(r.order_ids)},
                    "package_info": {
                        "id": r.object_id,
                        "items": [{"name": sku, "count": units} for sku, units in r.items],
                        "weight": r.weight_g,
                    },
                    "recipient": {
                        "name": r.recipient.name,
                        "mobile": r.recipient.phone,
                        "address": {
                            "province": r.recipient.province,
                            "city": r.recipient.city,
                            "district": r.recipient.district,
                            "detail": r.recipient.street,
                        },
                    },
                    "template_url": self.template_url,
                    "user_id": self.user_id,
                }
                for r in requests
            ],
        }

    def apply(self, carrier: str, warehouse: str, requests: Sequence[WaybillRequest]) -> list[WaybillResult]:
        body = self.request_body(carrier, requests)
        response = self.transport(CAINIAO_METHOD, {"param_waybill_cloud_print_apply_new_request": body})
        if "error_response" in response:
            error = response["error_response"]
            raise WaybillUnavailable(f"{error.get('code')}: {error.get('msg') or error.get('sub_msg')}")
        modules = (
            response.get("cainiao_waybill_ii_get_response", {})
            .get("modules", {})
            .get("waybill_cloud_print_response", [])
        )
        return [
            WaybillResult(
                object_id=m["object_id"],
                waybill=m.get("waybill_code") or None,
                error=None if m.get("waybill_code") else f"rejected: {m.get('sub_msg', 'no waybill_code')}",
                print_data=m.get("print_data", ""),
                parent_waybill=m.get("parent_waybill_code") or None,
            )
            for m in modules
        ]


# -- the local carrier ------------------------------------------------------------------------------------------
@dataclass
class SimulatedCarrier:
    """A carrier on this machine: numbers ``<PREFIX><warehouse index><serial>`` from a range of ``range_size`` per
    carrier and warehouse; every ``fail_every``-th call refused, every ``timeout_every``-th call issues and then
    loses its answer. Deterministic: the same calls give the same numbers."""

    range_size: int = 1_000_000
    fail_every: int = 0
    timeout_every: int = 0
    max_batch: int = CAINIAO_BATCH
    calls: int = 0
    issued: dict[str, str] = field(default_factory=dict)  # object id -> waybill
    serials: dict[tuple[str, str], int] = field(default_factory=dict)
    warehouses: dict[str, int] = field(default_factory=dict)

    def apply(self, carrier: str, warehouse: str, requests: Sequence[WaybillRequest]) -> list[WaybillResult]:
        if len(requests) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} parcels per call")
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise WaybillUnavailable("simulated: service unavailable")
        results = [self._issue(carrier, warehouse, r) for r in requests]
        if self.timeout_every and self.calls % self.timeout_every == 0:
            raise WaybillTimeout("simulated: issued, answer lost")
        return results

    def _issue(self, carrier: str, warehouse: str, request: WaybillRequest) -> WaybillResult:
        known = self.issued.get(request.object_id)
        if known is None:
            serial = self.serials.get((carrier, warehouse), 0)
            if serial >= self.range_size:
                return WaybillResult(request.object_id, None, "range_exhausted")
            self.serials[(carrier, warehouse)] = serial + 1
            index = self.warehouses.setdefault(warehouse, len(self.warehouses) + 1)
            known = self.issued[request.object_id] = f"{carrier.upper()[:4]}{index:02d}{serial:010d}"
        masked = f"{mask_name(request.recipient.name)} {mask_phone(request.recipient.phone)}"
        return WaybillResult(request.object_id, known, print_data=f'{{"waybill":"{known}","to":"{masked}"}}')

    def cainiao(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The same carrier answering as ``cainiao.waybill.ii.get`` would (for testing the Cainiao adapter)."""
        if method != CAINIAO_METHOD:
            return {"error_response": {"code": 22, "msg": f"unknown method {method}"}}
        body = params["param_waybill_cloud_print_apply_new_request"]
        dtos = body["trade_order_info_dtos"]
        if len(dtos) > CAINIAO_BATCH:
            return {"error_response": {"code": 40, "msg": "trade_order_info_dtos: at most 10"}}
        requests = [
            WaybillRequest(
                object_id=d["object_id"],
                carrier=body["cp_code"],
                warehouse=str(d["user_id"]),
                sender=Party(body["sender"]["name"], body["sender"]["mobile"], body["sender"]["address"]["detail"]),
                recipient=Address(name=d["recipient"]["name"], phone=d["recipient"]["mobile"]),
                weight_g=d["package_info"]["weight"],
                order_ids=tuple(d["order_info"]["trade_order_list"]),
                items=tuple((i["name"], i["count"]) for i in d["package_info"]["items"]),
            )
            for d in dtos
        ]
        results = self.apply(body["cp_code"], requests[0].warehouse, requests)
        return {
            "cainiao_waybill_ii_get_response": {
                "modules": {
                    "waybill_cloud_print_response": [
                        {"object_id": r.object_id, "waybill_code": r.waybill or "", "print_data": r.print_data}
                        | ({} if r.waybill else {"sub_msg": r.error})
                        for r in results
                    ]
                }
            }
        }
