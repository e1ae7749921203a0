"""Inventory: the only writer of stock (one partition per SKU, so one writer per SKU)."""
