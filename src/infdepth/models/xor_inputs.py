"""The XOR task's input count, torch-free: the network, the data and ``infdepth xor --help`` read it."""

from __future__ import annotations

#: inputs of the XOR task; ``k`` of them are active (their parity is the label), ``0 <= k <= INPUTS``
INPUTS = 8
