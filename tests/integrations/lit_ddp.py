"""Run by test_lightning.py: Trainer(strategy="ddp", devices=2, accelerator="cpu"); each rank saves its state.

Lightning starts rank 1 by running this script again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lit_model import Net, data, trainer

from infdepth.integrations.lightning import LearnedDepth

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = Net()
    t = trainer(max_epochs=3, strategy="ddp", devices=2, callbacks=[LearnedDepth(log=False)])
    t.fit(model, data(batch_size=4))
    result = {"state": model.state_dict(), "built": model.layer.built_blocks}
    torch.save(result, out / f"rank{t.global_rank}.pt")
