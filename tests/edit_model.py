"""A tiny GPT-2 that has learnt a handful of edits by heart, for the inference tests.

``trained_edit_model(tmp_path_factory)`` trains it once per test process (a
plain torch loop over the rendered samples, a few seconds on one CPU thread)
and saves model and tokenizer to a folder. Its greedy output for each sample
in :data:`SAMPLES` is that sample's ``diff``:

- ``calc``: a one-line fix, applies strictly.
- ``greet``: a new file (``ADDFILE`` prompt), applies strictly.
- ``crlf``: a file with CRLF line ends, applies strictly, CRLF kept.
- ``shift``: hunk header states line 7 of a 2-line file: only the lenient
  applier places it.
- ``wrong``: removes a line the file does not have: fails.
- ``half``: a header with only the old range (``@@ -1,7 @@``) over added
  lines and no context: it says nowhere where the lines go, so it fails.
- ``marker``: trained without EOS, followed by the next sample's ``<NME>``
  line, so generation must be stopped by the ``<NME>`` criterion.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffmodel.infer import DiffModel
from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.sample import render
from diffmodel.tiny import build_model, train_tokenizer

#: What follows the ``marker`` sample's diff in its training text.
NEXT_SAMPLE = "<NME> next.py\n<BEF> ADDFILE\n<MSG> Add next\n<DFF> @@ -0,0 +1 @@\n+x = 1\n"

SAMPLES = {
    "calc": dict(
        name="calc.py", before="def add(a, b):\n    return a - b\n", message="Fix add",
        diff="@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n",
        after="def add(a, b):\n    return a + b\n", status="strict",
    ),
    "greet": dict(
        name="greet.py", before="", message="Add greet",
        diff="@@ -0,0 +1,2 @@\n+def greet(name):\n+    return 'hi ' + name\n",
        after="def greet(name):\n    return 'hi ' + name\n", status="strict",
    ),
    "crlf": dict(
        name="setup.cfg", before="[tool]\r\ndebug = true\r\n", message="Turn debug off",
        diff="@@ -1,2 +1,2 @@\n [tool]\r\n-debug = true\r\n+debug = false\r\n",
        after="[tool]\r\ndebug = false\r\n", status="strict",
    ),
    "shift": dict(
        name="shift.py", before="x = 1\ny = 2\n", message="Bump y",
        diff="@@ -7,2 +7,2 @@\n x = 1\n-y = 2\n+y = 3\n",
        after="x = 1\ny = 3\n", status="lenient",
    ),
    "wrong": dict(
        name="other.py", before="a = 1\n", message="Set b",
        diff="@@ -1 +1 @@\n-b = 1\n+b = 2\n",
        after=None, status="failed",
    ),
    "half": dict(
        name="half.py", before="a = 1\nb = 2\n", message="Pad half",
        diff="@@ -1,7 @@\n+junk = 0\n+junk = 1\n+junk = 2\n",
        after=None, status="failed",
    ),
    "marker": dict(
        name="more.py", before="def f():\n    pass\n", message="Return one",
        diff="@@ -1,2 +1,2 @@\n def f():\n-    pass\n+    return 1\n",
        after="def f():\n    return 1\n", status="strict",
    ),
}


def training_text(key: str) -> str:
    s = SAMPLES[key]
    text = render(s["name"], s["before"], s["message"], s["diff"])
    return text + NEXT_SAMPLE if key == "marker" else text


def train_texts(texts: list[str], out: Path, eos: list[bool] | None = None, steps: int = 200, seed: int = 0,
                vocab_size: int = 384) -> Path:
    """Train a tiny GPT-2 (and its BPE tokenizer) on ``texts`` by heart and save both to ``out``.

    ``eos[i]`` False: text ``i`` is trained without a final EOS (default: every text ends in EOS).
    """
    tokenizer = train_tokenizer(texts * 2, vocab_size=vocab_size, model_max_length=256)
    model = build_model("gpt2", tokenizer, n_positions=256, seed=seed, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    eos_id = tokenizer.eos_token_id
    ends = [True] * len(texts) if eos is None else eos
    rows = [tokenizer(t)["input_ids"] + ([eos_id] if end else []) for t, end in zip(texts, ends)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), eos_id)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = labels[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            for _ in range(steps):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def train_edit_model(out: Path, steps: int = 200, seed: int = 0) -> Path:
    """Train the tiny model on :data:`SAMPLES` and save it (with its tokenizer) to ``out``."""
    return train_texts([training_text(k) for k in SAMPLES], out, [k != "marker" for k in SAMPLES], steps, seed)


_TRAINED: dict[str, Path] = {}


def trained_edit_model(tmp_path_factory) -> Path:
    """The trained model's folder, trained at most once per test process."""
    if "dir" not in _TRAINED:
        _TRAINED["dir"] = train_edit_model(tmp_path_factory.mktemp("edit_model"))
    return _TRAINED["dir"]


_EDIT_MANY = DiffModel.edit_many  # the real one, before any test patches it


def count_calls(monkeypatch, dies_at: int | None = None) -> list[int]:
    """Patch ``DiffModel.edit_many`` to record each call's number of requests in the returned list; with ``dies_at``,
    the call of that number raises KeyboardInterrupt (a Ctrl-C) instead. Calling it again replaces the patch."""
    sizes: list[int] = []

    def edit_many(self, requests, **kw):
        sizes.append(len(requests))
        if len(sizes) == dies_at:
            raise KeyboardInterrupt
        return _EDIT_MANY(self, requests, **kw)

    monkeypatch.setattr(DiffModel, "edit_many", edit_many)
    return sizes
