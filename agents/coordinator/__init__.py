"""Order coordinator: the reservation saga per order (one writer per order id)."""
