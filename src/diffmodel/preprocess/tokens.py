"""Token-id policy: which id pads a row and which ends a sample.

Invariants: no id is hard-coded; both come from the tokenizer. Padding uses
the tokenizer's pad token, else its EOS; every sample ends with EOS, so a
tokenizer without one is refused with a :class:`DiffModelError` naming the fix.
"""

from __future__ import annotations

from diffmodel.errors import DiffModelError


def pad_id_of(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DiffModelError(
            "the tokenizer has neither a pad token nor an EOS token; give it one "
            "(e.g. tokenizer.add_special_tokens({'eos_token': '<|endoftext|>'}) and save it) or use --tokenizer_name"
        )
    return pad


def eos_id_of(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DiffModelError("the tokenizer has no EOS token: every sample ends with EOS; use a tokenizer that defines eos_token")
    return tokenizer.eos_token_id
