"""Shared test settings: few threads (CI has 2 cores), a deterministic hypothesis profile."""

import os

import torch
from hypothesis import settings

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

settings.register_profile("ci", deadline=None, max_examples=50, derandomize=True)
settings.load_profile("ci")
