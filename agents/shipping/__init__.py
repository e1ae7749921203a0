"""Shipping (发货): carrier choice, e-waybills, tracking and the channel write-back — the stage after picking."""
