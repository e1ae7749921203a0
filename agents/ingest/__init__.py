"""Ingest (多渠道订单统一汇聚): channel payloads in, canonical orders out — over HTTP or from raw topics."""
