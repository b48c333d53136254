"""Learned-depth experiments (the g-infinity layer of "Going Deeper"): ``xor``, ``images``, ``study``."""
