"""``diffmodel train`` with a record of what each rank did; run by tests/test_ddp.py under torchrun.

    torchrun --nproc_per_node 2 tests/ddp_probe.py TRAIN ARGS...

Writes into ``$DIFFMODEL_PROBE_DIR``, per rank R:

``rankR-steps.jsonl``  one line per training step: the global step before it and
                       a hash of every row of the rank's batch.
``rankR.log``          the rank's ``diffmodel`` log records.
``rankR-final.json``   a hash of the rank's in-memory weights after training, and
                       the names of the native threads still running once
                       ``main`` has returned (``/proc/self/task/*/comm``).

With ``DIFFMODEL_PROBE_FROZEN_CLOCK_RANKS=1`` (a comma-separated list of ranks)
the ``--max_train_time`` clock of those ranks never advances, so only the
other ranks' clocks can end training.

Nothing in ``diffmodel`` is changed: run as a script, the probe wraps
``Trainer`` methods of its own process only; imported (for its hash
functions), it patches nothing. It keeps no reference to the ``Trainer``
(only the hash of its weights, taken when ``train`` returns), so what
``diffmodel`` frees at the end of the run is freed as it would be without it.
"""

import hashlib
import json
import logging
import os
import sys
import time

import torch
from transformers import Trainer

from diffmodel.cli import main

PROBE = os.environ.get("DIFFMODEL_PROBE_DIR", ".")
RANK = int(os.environ.get("RANK", "0"))
_final = {}


def row_hash(ids) -> str:
    return hashlib.sha1(json.dumps([int(i) for i in ids]).encode()).hexdigest()


def weights_hash(state_dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


#: How long the threads of a destroyed process group may take to end.
GLOO_EXIT_S = 10.0


def native_threads() -> list[str]:
    """Names of this process's running threads, Python's and native ones (Linux)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{task}/comm").read().strip())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return sorted(names)


_training_step = Trainer.training_step
_train = Trainer.train


def training_step(self, model, inputs, num_items_in_batch=None):
    with open(f"{PROBE}/rank{RANK}-steps.jsonl", "a") as f:
        f.write(json.dumps({"step": self.state.global_step, "rows": [row_hash(r) for r in inputs["input_ids"].tolist()]}) + "\n")
    return _training_step(self, model, inputs, num_items_in_batch)


def train(self, *args, **kwargs):
    result = _train(self, *args, **kwargs)
    model = self.accelerator.unwrap_model(self.model)
    _final.update(weights=weights_hash(model.state_dict()), global_step=self.state.global_step)
    return result


if __name__ == "__main__":
    Trainer.training_step = training_step
    Trainer.train = train
    if str(RANK) in os.environ.get("DIFFMODEL_PROBE_FROZEN_CLOCK_RANKS", "").split(","):
        from diffmodel.train.early_stop import EarlyStopCallback

        EarlyStopCallback.__init__.__defaults__ = (None, lambda: 0.0, True)  # (seconds, clock, watch_sigterm)
    handler = logging.FileHandler(f"{PROBE}/rank{RANK}.log")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("diffmodel").addHandler(handler)
    status = main(["train", *sys.argv[1:]])
    # A destroyed process group's gloo threads end on their own, soon after (on a loaded machine, not at once);
    # one kept alive by something still holding the group would stay until the interpreter exits.
    threads, deadline = native_threads(), time.monotonic() + GLOO_EXIT_S
    while any("gloo" in t for t in threads) and time.monotonic() < deadline:
        time.sleep(0.05)
        threads = native_threads()
    with open(f"{PROBE}/rank{RANK}-final.json", "w") as f:
        json.dump({**_final, "threads_after_main": threads}, f)
    sys.exit(status)
