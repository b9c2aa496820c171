"""The ``commit`` edit format: OctoPack / CommitPack's commit format, the whole new file.

::

    <commit_before>{before}<commit_msg>{message}<commit_after>{after}

No newline or space is added around the markers, and the file name is not
part of the text (CommitPack's commit format has none). The message is
stripped, as in every format here.

Sources: the StarCoder training data formats ("Commits:
``<commit_before>code<commit_msg>text<commit_after>code<|endoftext|>``",
BigCode's StarCoder playground, ``static/formats.md``), StarCoder's
tokenizer, which holds ``<commit_before>``, ``<commit_msg>`` and
``<commit_after>`` as special tokens, and the ``bigcode/commitpack-subset-cf``
data card ("commit format (cf)": code before, special token, message, code
after), used to pretrain SantaCoderPack in the OctoPack paper (Muennighoff et
al. 2023, arXiv:2308.07124). The card spells the middle token
``<commit_message>``; the tokenizer's is ``<commit_msg>``, used here.

Loss starts at ``<commit_after>`` (the marker included, as ``<DFF>`` is in
``carper``): it is the first ``<commit_after>`` after the first
``<commit_msg>``, and its message part at that ``<commit_msg>``
(:func:`message_start`). That is exact when the message holds no marker and the file
before holds no ``<commit_msg>`` followed later by ``<commit_after>``; the
new file may hold anything. A sample whose new file equals the old one has
nothing to train (:func:`is_empty`).

Model output is the new file, cut before a ``<commit_before>`` (the start of
a next sample); applying it never fails.
"""

from __future__ import annotations

from diffmodel.diff import ApplyResult, ApplyStatus, Status

NAME = "commit"
#: What a model trained in this format writes (the model card says it).
WRITES = "the whole file after the change"
BEFORE_MARKER = "<commit_before>"
MESSAGE_MARKER = "<commit_msg>"
AFTER_MARKER = "<commit_after>"
MARKER = AFTER_MARKER
#: where a next sample starts in model output: a ``<commit_before>`` anywhere (no newline precedes it)
NEXT, NEXT_STARTS_LINE = BEFORE_MARKER, False


def prompt(name: str, before: str, message: str) -> str:
    """``<commit_before>{before}<commit_msg>{message}<commit_after>`` (``name`` is not written)."""
    del name
    return f"{BEFORE_MARKER}{before}{MESSAGE_MARKER}{message.strip()}{AFTER_MARKER}"


def render(name: str, before: str, message: str, after: str, diff: str | None = None) -> str:
    """The prompt followed by the whole new file (``diff`` is not used)."""
    del diff
    return prompt(name, before, message) + after


def loss_start(text: str) -> int:
    """Index of the first ``<commit_after>`` after the first ``<commit_msg>``, or -1."""
    msg = text.find(MESSAGE_MARKER)
    return -1 if msg < 0 else text.find(AFTER_MARKER, msg + len(MESSAGE_MARKER))


def message_start(text: str) -> int:
    """Index of the first ``<commit_msg>`` (the one :func:`loss_start` follows), or -1 when there is no target."""
    return -1 if loss_start(text) < 0 else text.find(MESSAGE_MARKER)


def is_empty(text: str, start: int) -> bool:
    """True when the new file after the ``<commit_after>`` at ``start`` equals the file before."""
    msg = text.find(MESSAGE_MARKER)
    head = text.find(BEFORE_MARKER)
    before = text[head + len(BEFORE_MARKER):msg] if 0 <= head < msg else text[:msg]
    return text[start + len(AFTER_MARKER):] == before


def parse(output: str) -> str:
    """The new file a model wrote: its output up to a ``<commit_before>`` (a next sample); never raises."""
    output = output if isinstance(output, str) else str(output)
    cut = output.find(BEFORE_MARKER)
    return output if cut < 0 else output[:cut]


def apply(before: str, parsed_or_output: str) -> ApplyResult:
    """The new file itself; status ``empty`` when it equals ``before`` (no change), else ``applied``."""
    after = parse(parsed_or_output)
    if after == before:
        return ApplyResult(before, ApplyStatus.EMPTY, [], Status.EMPTY, ["the new file equals the old one"])
    return ApplyResult(after, ApplyStatus.APPLIED, [], Status.VALID, [])
