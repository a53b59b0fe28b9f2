"""Outbound wires: what keyrelay sends to upstreams and reads back from them."""
