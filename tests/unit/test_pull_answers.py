"""The order puller's list adapter against answers a platform should not give: each is a refusal (the window is
asked again later), never an exception that would stop the puller."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.ingest import pull
from agents.ingest.pull import ListRefused, TaobaoOrderList


def serve(body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b"not json", b'{"trades_sold_increment_get_response": {"trades": {"trade": 5}}}'],
)
def test_nonsense_is_a_refusal(body: bytes) -> None:
    server = serve(body)
    try:
        with pytest.raises(ListRefused):
            TaobaoOrderList(f"http://127.0.0.1:{server.server_address[1]}").page("acme", "s1", 0, 1000, 1, 10)
    finally:
        server.shutdown()


def test_a_page_too_large_is_refused_and_a_trade_without_id_keeps_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(b'{"trades_sold_increment_get_response": {"has_next": false, "trades": {"trade": [{"x": 1}]}}}')
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        page = TaobaoOrderList(url).page("acme", "s1", 0, 1000, 1, 10)
        assert page.orders == [("missing-tid", b'{"x":1}')] and not page.has_next
        monkeypatch.setattr(pull, "MAX_PAGE_BYTES", 10)
        with pytest.raises(ListRefused, match="over 10 bytes"):
            TaobaoOrderList(url).page("acme", "s1", 0, 1000, 1, 10)
    finally:
        server.shutdown()
