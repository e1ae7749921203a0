"""Locust load scenarios: channel orders at a fixed rate through the raw topics and the HTTP API, end-to-end
decision latency as Locust events, and a runner that checks the invariants afterwards.

* ``locustfile.py`` — the users, the decision watcher and the load shape (run it with ``locust -f``);
* ``scenario.py``   — rate presets, the users' order streams and the log of what was sent (no gevent);
* ``results.py``    — Locust's CSV read back;
* ``run.py``        — ``python -m bench.locust``: a fresh engine, the scenario, the invariants, one JSON line.
"""
