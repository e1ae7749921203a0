"""Peers: the same reservation job built the usual way on other stacks, measured beside the engine."""
