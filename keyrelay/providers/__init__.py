"""Outbound: what upstreams speak."""
