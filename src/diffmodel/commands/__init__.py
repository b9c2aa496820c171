"""The commands of ``diffmodel``: one thin module per command.

Each module has ``main(argv) -> int`` and follows one shape: parse the
arguments, validate all of them (every problem reported at once, before any
data or model is touched), call the library, print. Logic lives in the
library rooms (``mine/``, ``data/``, ``preprocess/``, ``train/``, ``infer/``,
``diff/``, ``evaluate/``, ``launch/``), never here. Heavy modules (torch,
transformers, datasets) are imported after parsing, so ``--help`` is fast.
"""
