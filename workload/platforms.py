"""Simulated platforms (Taobao/Tmall, JD, Douyin, Shopify) as a real HTTP server, for the main job and the tests.

Stock sync: it speaks the stock-update requests of :mod:`agents.stocksync.platforms` and answers in each
platform's shape; it keeps, per platform, tenant, shop and SKU, the last quantity set, applies each idempotency key
once (a second call gets the first answer), and refuses every ``fail_every``-th call the way its platform does
(Taobao/JD an ``error_response`` "service busy", Douyin ``code`` 50002, Shopify HTTP 429).

Order lists (定时抓取): every order placed on it (:meth:`SimulatedPlatforms.place`), stamped with the platform's
own modification time (wall time when placed), is listed by Taobao's ``taobao.trades.sold.increment.get`` (by
modified time, page by page, ``has_next``); at most ``list_per_s`` list calls per shop and second (more: "App
Call Limited"); :meth:`SimulatedPlatforms.outage` makes every list call fail until it ends.

``GET /state`` shows what it holds.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from agents.ingest.adapters.base import CST
from agents.stocksync.platforms import SHOPIFY_PATH
from engine.supervisor import Spawner

PATHS = {"/router/rest": "taobao", "/routerjson": "jd", "/sku/syncStock": "douyin", SHOPIFY_PATH: "shopify"}


class SimulatedPlatforms:
    def __init__(self, fail_every: int = 0, host: str = "127.0.0.1", port: int = 0, list_per_s: int = 20) -> None:
        self.fail_every = fail_every
        self.lock = threading.Lock()
        self.quantities: dict[tuple[str, str, str, str], int] = {}  # (platform, tenant, shop, sku) -> quantity
        self.answers: dict[str, tuple[int, bytes]] = {}  # idempotency key -> the first answer
        self.calls = self.refused = self.repeated = 0
        self.listed: dict[
            tuple[str, str], list[tuple[int, str, bytes]]
        ] = {}  # (tenant, shop) -> (modified, tid, trade)
        self.list_per_s = list_per_s
        self.list_calls = self.list_refused = 0
        self._list_window: dict[tuple[str, str], list[float]] = {}
        self._outage = False
        platforms = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a gateway thread sends its calls on one connection
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK wait

            def log_message(self, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:
                if self.path != "/state":
                    self._send(404, b'{"error": "not found"}')
                    return
                self._send(200, orjson.dumps(platforms.state()))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path in ("/sim/place", "/sim/outage"):  # the simulation's own controls
                    doc = orjson.loads(body)
                    if self.path == "/sim/place":
                        platforms.place(doc["tenant"], doc["shop"], doc["trade"], doc.get("modified_ms"))
                    else:
                        platforms.outage(bool(doc["down"]))
                    self._send(200, b"{}")
                    return
                platform = PATHS.get(self.path)
                if platform is None:
                    self._send(404, b'{"error": "not found"}')
                    return
                if platform == "taobao" and b"method=taobao.trades.sold.increment.get" in body:
                    status, answer = platforms.list_trades(self.headers, body)
                else:
                    status, answer = platforms.handle(platform, self.headers, body)
                self._send(status, answer)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="simulated-platforms", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SimulatedPlatforms:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "quantities": [
                    {"platform": p, "tenant": tenant, "shop_id": shop, "sku": sku, "quantity": q}
                    for (p, tenant, shop, sku), q in sorted(self.quantities.items())
                ],
                "calls": self.calls,
                "refused": self.refused,
                "repeated": self.repeated,
                "orders_listed": sum(len(v) for v in self.listed.values()),
                "list_calls": self.list_calls,
                "list_refused": self.list_refused,
            }

    # -- order lists -------------------------------------------------------------------------------------------
    def place(self, tenant: str, shop: str, trade: dict[str, Any], modified_ms: int | None = None) -> None:
        """An order (a Taobao trade) as the platform holds it, modified now (or at ``modified_ms``)."""
        at = int(time.time() * 1000) if modified_ms is None else modified_ms
        with self.lock:
            self.listed.setdefault((tenant, shop), []).append((at, str(trade["tid_str"]), orjson.dumps(trade)))

    def outage(self, down: bool) -> None:
        with self.lock:
            self._outage = down

    def list_trades(self, headers: Any, body: bytes) -> tuple[int, bytes]:
        tenant, shop = headers.get("X-Oms-Tenant", ""), headers.get("X-Oms-Shop", "")
        form = dict(urllib.parse.parse_qsl(body.decode()))
        with self.lock:
            self.list_calls += 1
            now = time.monotonic()
            recent = [t for t in self._list_window.get((tenant, shop), []) if now - t < 1.0]
            self._list_window[(tenant, shop)] = [*recent, now]
            if self._outage:
                self.list_refused += 1
                error = {"code": 520, "msg": "Remote service error", "sub_code": "isp.remote-service-unavailable"}
                return 200, orjson.dumps({"error_response": error})
            if len(recent) >= self.list_per_s:
                self.list_refused += 1
                return 200, orjson.dumps({"error_response": {"code": 7, "msg": "App Call Limited"}})
            try:
                start, end = cst_ms(form["start_modified"]), cst_ms(form["end_modified"])
                page, size = int(form.get("page_no", 1)), min(100, int(form.get("page_size", 40)))
            except (KeyError, ValueError) as exc:
                return 200, orjson.dumps({"error_response": {"code": 41, "msg": f"Invalid arguments: {exc}"}})
            found = sorted((m, tid, t) for m, tid, t in self.listed.get((tenant, shop), []) if start <= m < end + 1000)
        chunk = found[(page - 1) * size : page * size]
        trades = b"[" + b",".join(t for _, _, t in chunk) + b"]"
        has_next = b"true" if page * size < len(found) else b"false"
        return 200, (
            b'{"trades_sold_increment_get_response":{"total_results":' + str(len(found)).encode()
            + b',"has_next":' + has_next + b',"trades":{"trade":' + trades + b"}}}"
        )  # fmt: skip

    def handle(self, platform: str, headers: Any, body: bytes) -> tuple[int, bytes]:
        tenant, shop = headers.get("X-Oms-Tenant", ""), headers.get("X-Oms-Shop", "")
        key = headers.get("Idempotency-Key", "")
        with self.lock:
            self.calls += 1
            if key and key in self.answers:
                self.repeated += 1
                return self.answers[key]
            if self.fail_every and self.calls % self.fail_every == 0:
                self.refused += 1
                return busy(platform)
            try:
                sku, quantity = parse(platform, body)
            except (KeyError, ValueError, TypeError) as exc:
                return 400, orjson.dumps({"error": f"bad request: {exc}"})
            self.quantities[(platform, tenant, shop, sku)] = quantity
            answer = ok(platform, sku, quantity)
            if key:
                self.answers[key] = answer
            return answer


def parse(platform: str, body: bytes) -> tuple[str, int]:
    if platform == "taobao":
        form = dict(urllib.parse.parse_qsl(body.decode()))
        return form["outer_id"], int(form["quantity"])
    if platform == "jd":
        form = dict(urllib.parse.parse_qsl(body.decode()))
        param = orjson.loads(form["360buy_param_json"])
        return str(param["outerId"]), int(param["stockNum"])
    doc = orjson.loads(body)
    if platform == "douyin":
        return str(doc["out_sku_id"]), int(doc["stock_num"])
    return str(doc["inventory_item_id"]), int(doc["available"])


def ok(platform: str, sku: str, quantity: int) -> tuple[int, bytes]:
    if platform == "taobao":
        return 200, orjson.dumps({"item_quantity_update_response": {"item": {"outer_id": sku, "num": quantity}}})
    if platform == "jd":
        return 200, orjson.dumps({"jingdong_stock_write_updateSkuStock_responce": {"success": True, "code": "0"}})
    if platform == "douyin":
        return 200, orjson.dumps({"code": 10000, "msg": "success", "data": {}})
    return 200, orjson.dumps({"inventory_level": {"inventory_item_id": sku, "available": quantity}})


def busy(platform: str) -> tuple[int, bytes]:
    if platform in ("taobao", "jd"):
        error = {"code": 7, "msg": "App Call Limited", "sub_code": "isv.service-busy"}
        return 200, orjson.dumps({"error_response": error})
    if platform == "douyin":
        return 200, orjson.dumps({"code": 50002, "msg": "系统繁忙，请稍后重试"})
    return 429, orjson.dumps({"errors": "Exceeded 2 calls per second for api client. Reduce request rates."})


class PlatformsProcess:
    """The simulated platforms in a process of their own (``python -m workload.platforms``), with the same
    ``url``, ``state``, ``place``, ``outage`` and ``stop`` as :class:`SimulatedPlatforms`: the main job serves tens
    of thousands of stock updates, and in the job's own process they would wait for its GIL. The process is started
    like a worker (it dies with the job) and logs to ``log_path``."""

    def __init__(self, fail_every: int, log_path: Path, timeout_s: float = 30.0) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.spawner = Spawner()
        argv = [sys.executable, "-m", "workload.platforms", "--port", str(port), "--fail-every", str(fail_every)]
        self.proc = self.spawner.popen(argv, log_path, dict(os.environ))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.state()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the simulated platforms did not start (see {log_path})") from None
                time.sleep(0.1)

    def _post(self, path: str, doc: dict[str, Any]) -> None:
        req = urllib.request.Request(self.url + path, data=orjson.dumps(doc), method="POST")
        with urllib.request.urlopen(req, timeout=10) as res:
            res.read()

    def place(self, tenant: str, shop: str, trade: dict[str, Any], modified_ms: int | None = None) -> None:
        self._post("/sim/place", {"tenant": tenant, "shop": shop, "trade": trade, "modified_ms": modified_ms})

    def outage(self, down: bool) -> None:
        self._post("/sim/outage", {"down": down})

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/state", timeout=10) as res:
            return dict(orjson.loads(res.read()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.spawner.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workload.platforms", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args(argv)
    platforms = SimulatedPlatforms(fail_every=args.fail_every, port=args.port)
    print(f"simulated platforms at {platforms.url}", flush=True)
    platforms.server.serve_forever()  # until SIGTERM
    return 0


def cst_ms(text: str) -> int:
    """Taobao's ``yyyy-MM-dd HH:mm:ss`` (China time) as epoch milliseconds."""
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST).timestamp() * 1000)


if __name__ == "__main__":
    raise SystemExit(main())
