"""Run a diff model: file + name + message -> generated diff -> edited file.

``DiffModel.from_pretrained(path).edit(code, message, name)`` returns an
:class:`Edit` with the generated ``diff``, the edited file (``new_code``) and
a ``status``; :meth:`DiffModel.edit_many` does the same for many requests,
batched, with ``num_samples`` samples each.

- :mod:`~diffmodel.infer.prompt`: requests, results and the text steps
  (cut the generation, parse, apply, in any ``--edit_format``); no torch.
- :mod:`~diffmodel.infer.model`: :class:`DiffModel` and batched generation.
- :mod:`~diffmodel.infer.constrained`: diff-aware decoding (the default): only
  tokens the diff grammar allows, forced text fed in chunks, greedy speculation.
- :mod:`~diffmodel.infer.places`: its KV cache in fixed places, each decoding
  pass replayed as a CUDA graph (on a GPU).
- :mod:`~diffmodel.infer.requests`: reading a file to edit and ``--jsonl`` requests.

Loading a saved model is :mod:`diffmodel.checkpoint`'s job.

Invariant: importing this package (or its ``prompt`` / ``requests`` modules)
does not import torch; the names of ``model`` (:class:`DiffModel`, ...) are
imported on first use, so commands that only read requests keep ``--help`` fast.
"""

from diffmodel.infer.prompt import (
    STOP_EOS, STOP_LENGTH, STOP_MARKER, STOP_NONE, UNCONSTRAINED_FORMAT, Edit, EditRequest, EditStatus, as_request,
    cut_generation, decoding, finish_edit,
)

#: Names served from :mod:`diffmodel.infer.model` (torch, transformers) on first use.
_FROM_MODEL = ("STOP_WINDOW", "DiffModel", "NameMarkerStop", "tokens_with_gt")


def __getattr__(name: str):
    if name in _FROM_MODEL:
        from diffmodel.infer import model

        return getattr(model, name)
    raise AttributeError(f"module 'diffmodel.infer' has no attribute {name!r}")


__all__ = [
    "STOP_EOS", "STOP_LENGTH", "STOP_MARKER", "STOP_NONE", "STOP_WINDOW",
    "DiffModel", "Edit", "EditRequest", "EditStatus", "NameMarkerStop",
    "UNCONSTRAINED_FORMAT", "as_request", "cut_generation", "decoding", "finish_edit", "tokens_with_gt",
]
