"""Fuzz harnesses for the parsers at the gateway's edges, and the invariants they check."""
