"""Re-wrapping after growth relies on DDP dropping its gradient hooks with the old wrapper."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import os, socket, weakref
import torch, torch.distributed as dist
from torch import nn
from infdepth.distributed import DistContext
from infdepth import InfiniteDepth, grow

with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
dist.init_process_group("gloo", rank=0, world_size=1)
ctx = DistContext(rank=0, world=2)  # wrap for real although this group has one process
layer = InfiniteDepth(lambda i: nn.Linear(3, 3), w0=1.5, grow_step=2, seed=0)
opt = torch.optim.SGD(layer.parameters(), lr=0.1)
wrapped = ctx.wrap(layer)
wrapped(torch.randn(4, 3)).sum().backward()
old, reducer = weakref.ref(wrapped), weakref.ref(wrapped.reducer)
with torch.no_grad():
    layer.w.fill_(3.5)
assert grow(layer, opt)
wrapped = ctx.rewrap(wrapped, layer)
assert old() is None and reducer() is None, "the old wrapper and its hooks outlived the rewrap"
opt.zero_grad()
wrapped(torch.randn(4, 3)).sum().backward()
assert layer.blocks[3].weight.grad is not None
dist.destroy_process_group()
print("ok")
"""


def test_rewrap_leaves_no_stale_wrapper_behind() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
