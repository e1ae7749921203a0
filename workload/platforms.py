"""Simulated platforms (Taobao/Tmall, JD, Douyin, Shopify) as a real HTTP server, for the main job and the tests.

It speaks the stock-update requests of :mod:`agents.stocksync.platforms` and answers in each platform's shape;
it keeps, per platform, shop and SKU, the last quantity set, applies each idempotency key once (a second call
gets the first answer), and refuses every ``fail_every``-th call the way its platform does (Taobao/JD an
``error_response`` "service busy", Douyin ``code`` 50002, Shopify HTTP 429). ``GET /state`` shows what it holds.
"""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from agents.stocksync.platforms import SHOPIFY_PATH

PATHS = {"/router/rest": "taobao", "/routerjson": "jd", "/sku/syncStock": "douyin", SHOPIFY_PATH: "shopify"}


class SimulatedPlatforms:
    def __init__(self, fail_every: int = 0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fail_every = fail_every
        self.lock = threading.Lock()
        self.quantities: dict[tuple[str, str, str, str], int] = {}  # (platform, tenant, shop, sku) -> quantity
        self.answers: dict[str, tuple[int, bytes]] = {}  # idempotency key -> the first answer
        self.calls = self.refused = self.repeated = 0
        platforms = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:
                if self.path != "/state":
                    self._send(404, b'{"error": "not found"}')
                    return
                self._send(200, orjson.dumps(platforms.state()))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                platform = PATHS.get(self.path)
                if platform is None:
                    self._send(404, b'{"error": "not found"}')
                    return
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
            }

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
