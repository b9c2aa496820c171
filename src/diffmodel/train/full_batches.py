"""Training batches of one shape under torch.compile: an epoch's last, smaller batch filled with empty rows.

The compiled step is compiled for the shape of its batches. An epoch's last batch usually holds fewer rows than
``--per_device_train_batch_size``, and that new shape compiled the whole step again (on a GPU, minutes, for one
batch), after which the step ran a graph of any number of rows. Compiled packed training fills that batch with rows of
pad tokens alone instead (:class:`~diffmodel.train.collate.PackedCollator`'s ``batch_rows``): a pad row is one pad
sample with no loss-bearing token, so the loss, its gradients and the accuracy are those of the real rows; the
input-token count and the MFU of that one step count the pad rows, as they count each row's pad segment. Evaluation
batches are left as they come (their batch size may be smaller than training's). Flattened (padding-free) batches
have one row whatever the samples, so nothing is filled.
"""

from __future__ import annotations

import dataclasses

from diffmodel.train.collate import PackedCollator


class FullBatchesMixin:
    """Put before ``Trainer`` in the bases."""

    def train_collator(self):
        """The collator of training batches (see the module docstring)."""
        collator = self.data_collator
        if self.args.torch_compile and isinstance(collator, PackedCollator) and not collator.flatten:
            return dataclasses.replace(collator, batch_rows=self._train_batch_size)
        return collator

    def get_train_dataloader(self):
        given, self.data_collator = self.data_collator, self.train_collator()
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = given
