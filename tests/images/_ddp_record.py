"""Run a config (under torchrun or alone) recording the training positions each process receives.

    torchrun --nproc_per_node 2 tests/images/_ddp_record.py CONFIG OUT_DIR

Writes OUT_DIR/rank<r>.json ([epoch, step, positions] per batch) and, on rank 0, OUT_DIR/run.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kdhub.contract.config_loading import load_config
from kdhub.engine import stream
from kdhub.engine.runner import run


def main(config: str, out: str) -> None:
    seen: list = []
    original = stream.StreamData.train_batches

    def recording(self, batch_size, drop_last):
        epoch = self.epochs_done + 1
        for step, (x, y, idx) in enumerate(original(self, batch_size, drop_last)):
            seen.append([epoch, step, idx.tolist()])
            yield x, y, idx

    stream.StreamData.train_batches = recording
    result = run(load_config(config))
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    if result.run_id is not None:
        Path(out, "run.json").write_text(json.dumps({"run_id": result.run_id, "last_acc": result.last_acc}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
