"""Every record that crosses a topic, defined once (msgspec structs, validated on decode) and versioned.

``oms schemas export DIR`` writes the JSON Schema of each record on a public topic for downstream consumers.
"""
