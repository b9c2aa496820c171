"""A hand-made character-level BPE tokenizer whose token ids are known exactly.

Ids: each character of ``string.printable`` is its index there ('0'..'9' are
0..9, 'a' is 10, 'A' is 36, ' ' is 94, '\\n' is 96); then the merges, in
order; EOS last. With the default merges "\\n<" is one token, so the ``<DFF>``
marker is merged with the newline before it.
"""

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

CHARS = list(string.printable)
DEFAULT_MERGES = [("\n", "<"), ("D", "F"), ("DF", "F")]


def char_tokenizer(merges=DEFAULT_MERGES, pad: bool = False) -> PreTrainedTokenizerFast:
    vocab = {c: i for i, c in enumerate(CHARS)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.decoder = decoders.Fuse()
    extra = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", **extra)


def ids(text: str) -> list[int]:
    """Ids of ``text`` under the tokenizer without merges (one id per character)."""
    return [CHARS.index(c) for c in text]


#: Files whose forced lines are hard to get byte for byte.
HARD_FILES = {
    "crlf": "[core]\r\n    name = demo\r\n    debug = true\r\n",
    "no final newline": "VALUE = 1\nOTHER = 2",
    "tabs": "\tx = 1\n\ty = 2\n",
    "unicode": "# Café ☕\n\nGrüße, 世界!\n",
    # "\n    " is one token of the tiny tokenizer: the newline merges with the next line's indent
    "newline merged": "def total(items):\n    result = 0\n    return result\n",
}
