"""Filters for mined samples: small pure functions, one per rule.

Every filter is on by default with the threshold documented on
:class:`FilterOptions`, and every sample a filter drops is counted under the
filter's reason (the ``DROP_*`` constants) in the mining report. A changed file
is dropped for the *first* reason that applies, in the order of
:data:`DROP_REASONS`.

The message rules follow the ideas CommitPack used to clean commit messages
(length and word bounds, no merge messages, no web-editor or bot messages, no
bare version bumps), with looser defaults: CommitPackFT kept only messages of
more than 10 characters and more than 4 words, written as an imperative
instruction; here a message only has to say something.

Invariants:
- Filters look only at their arguments (no I/O, no global state).
- A filter returns ``True``/``None`` for "keep" so a caller can chain them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

# Reasons a changed file does not become a sample, in the order they are checked.
DROP_DELETED = "deleted_file"
DROP_SUBMODULE = "submodule"
DROP_SYMLINK = "symlink"
DROP_BOT_AUTHOR = "bot_author"
DROP_NOISE_MESSAGE = "noise_message"
DROP_MESSAGE_LENGTH = "message_length"
DROP_MESSAGE_WORDS = "message_words"
DROP_BINARY = "binary"
DROP_NON_UTF8 = "non_utf8"
DROP_MISSING_OBJECT = "missing_object"
DROP_LANGUAGE = "language"
DROP_BEFORE_CHARS = "before_too_long"
DROP_NO_CHANGE = "no_content_change"
DROP_DIFF_CHARS = "diff_too_long"
DROP_TOKENS = "too_many_tokens"
DROP_DUPLICATE = "duplicate"

#: Every drop reason, in the order a changed file is checked.
DROP_REASONS = (
    DROP_DELETED, DROP_SUBMODULE, DROP_SYMLINK, DROP_BOT_AUTHOR, DROP_NOISE_MESSAGE,
    DROP_MESSAGE_LENGTH, DROP_MESSAGE_WORDS, DROP_BINARY, DROP_NON_UTF8, DROP_MISSING_OBJECT,
    DROP_LANGUAGE, DROP_BEFORE_CHARS, DROP_NO_CHANGE, DROP_DIFF_CHARS, DROP_TOKENS, DROP_DUPLICATE,
)


@dataclass(frozen=True)
class FilterOptions:
    """Thresholds of every filter; the defaults are what ``diffmodel mine`` uses."""

    min_message_chars: int = 10
    """Drop a commit whose message (stripped) is shorter than this. CommitPackFT: more than 10."""
    max_message_chars: int = 4000
    """Drop a commit whose message is longer than this (pasted logs, changelogs)."""
    min_message_words: int = 2
    """Drop a commit whose message has fewer whitespace-separated words. CommitPackFT: more than 4."""
    max_message_words: int = 600
    """Drop a commit whose message has more words than this."""
    noise_messages: bool = True
    """Drop merge, web-editor, work-in-progress, version-bump and bot messages (see :func:`noise_kind`)."""
    drop_reverts: bool = False
    """Also drop ``Revert "..."`` commits (kept by default: a revert is a real edit)."""
    bot_authors: bool = True
    """Drop commits whose author name ends in ``[bot]`` or names a known bot."""
    languages: tuple[str, ...] | None = None
    """Languages to keep (names from :mod:`diffmodel.mine.languages`, any case). ``None``
    keeps every file with a known language; ``("all",)`` keeps every text file."""
    max_before_chars: int = 50_000
    """Drop a file whose before-version has more characters than this. CommitPackFT: 50,000."""
    max_diff_chars: int = 20_000
    """Drop a file whose diff has more characters than this."""
    max_tokens: int | None = 2048
    """With a tokenizer, drop a sample whose rendered text has more tokens than this
    (CarperAI's diff models dropped files over 2048 tokens). Ignored without a tokenizer."""
    dedup: bool = True
    """Drop a sample whose (before, diff) pair was already written (exact duplicates)."""
    licenses: tuple[str, ...] | None = None
    """SPDX ids of the licences to keep (a repository is kept when its licence file
    matches one); ``None`` keeps every repository. ``permissive`` names :data:`PERMISSIVE`."""
    allowed_languages: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        allowed = frozenset(lang.lower() for lang in self.languages) if self.languages else frozenset()
        object.__setattr__(self, "allowed_languages", allowed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("allowed_languages", None)
        for key in ("languages", "licenses"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


# ---------------------------------------------------------------- messages

def message_length_ok(message: str, min_chars: int, max_chars: int) -> bool:
    """``min_chars <= len(message.strip()) <= max_chars``."""
    return min_chars <= len(message.strip()) <= max_chars


def message_words_ok(message: str, min_words: int, max_words: int) -> bool:
    """``min_words <= number of whitespace-separated words <= max_words``."""
    return min_words <= len(message.split()) <= max_words


_VERSION = r"v?\d+(?:\.\d+)+(?:[-+.]?[0-9A-Za-z]+)*"

#: (kind, pattern) checked against the subject (first line), lower-cased and stripped.
_NOISE_SUBJECT: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("merge", re.compile(
        r"^merged? (?:branch|remote-tracking branch|pull request|tag|commit|changes from|upstream|"
        r"'[^']*'|\"[^\"]*\"|.* into \S+$)")),
    ("web_editor", re.compile(r"^(?:update|create|delete|upload) \S+$")),
    ("web_editor", re.compile(r"^(?:add files via upload|rename \S+ to \S+)$")),
    ("work_in_progress", re.compile(r"^\[?wip\b")),
    ("work_in_progress", re.compile(
        r"^(?:work in progress|wip|tmp|temp|test|testing|commit|changes|stuff|fix|fixes|fixed|"
        r"update|updates|updated|minor|minor changes|minor fixes|cleanup|misc|save|checkpoint|"
        r"asdf|foo|more|again|done|[.!?~-]+)[.!]*$")),
    ("initial_commit", re.compile(r"^(?:initial|first|init)(?: commit| import| version)?[.!]*$")),
    ("version_bump", re.compile(
        rf"^(?:(?:bump|bumped|bumping|release|released|releasing|prepare|preparing|tag|tagged|cut|version|"
        rf"set version|update version|to|for|version to|release of)\b[\s:]*)*{_VERSION}[.!]*$")),
    ("version_bump", re.compile(rf"^bump(?:ed)? version\b.*{_VERSION}")),
    ("bot", re.compile(r"^bump \S+ from \S+ to \S+")),  # dependabot
    ("bot", re.compile(r"^(?:chore\(deps\): )?(?:update|pin) (?:dependency|module|\S+ digest)\b")),  # renovate
    ("bot", re.compile(r"^\[pre-commit\.ci\]|^(?:auto(?:mated)?[- ]?commit|auto[- ]?update)\b")),
)

_REVERT = re.compile(r"^revert\b")


def noise_kind(message: str, drop_reverts: bool = False) -> str | None:
    """Which kind of noise ``message`` is, or ``None`` for a real message.

    Kinds: ``merge`` ("Merge branch 'x'", "Merge pull request #1 from ..."),
    ``web_editor`` (GitHub's default "Update README.md", "Create main.py",
    "Add files via upload"), ``work_in_progress`` ("wip", "fix", "update", "."),
    ``initial_commit``, ``version_bump`` ("v1.2.3", "Bump version to 1.2.3",
    "Release 2.0.0"), ``bot`` (dependabot, renovate, pre-commit.ci messages) and,
    when ``drop_reverts``, ``revert``.
    """
    subject = message.strip().split("\n", 1)[0].strip().lower()
    for kind, pattern in _NOISE_SUBJECT:
        if pattern.search(subject):
            return kind
    if drop_reverts and _REVERT.search(subject):
        return "revert"
    return None


_BOT_NAMES = re.compile(r"\[bot\]$|^(?:dependabot|renovate|greenkeeper|github-actions|pre-commit-ci|snyk-bot)\b", re.I)


def is_bot_author(author: str) -> bool:
    """``True`` for an author name such as ``dependabot[bot]`` or ``renovate-bot``."""
    return bool(_BOT_NAMES.search(author.strip()))


def message_drop_reason(message: str, author: str, options: FilterOptions) -> str | None:
    """The reason a commit with this message and author is dropped, or ``None``."""
    if options.bot_authors and is_bot_author(author):
        return DROP_BOT_AUTHOR
    if options.noise_messages and noise_kind(message, options.drop_reverts):
        return DROP_NOISE_MESSAGE
    if not message_length_ok(message, options.min_message_chars, options.max_message_chars):
        return DROP_MESSAGE_LENGTH
    if not message_words_ok(message, options.min_message_words, options.max_message_words):
        return DROP_MESSAGE_WORDS
    return None


# ---------------------------------------------------------------- contents

#: How many leading bytes :func:`is_binary` looks at (git looks at the same 8000).
BINARY_SNIFF_BYTES = 8000


def is_binary(data: bytes) -> bool:
    """Git's rule: a NUL byte in the first 8000 bytes makes a file binary."""
    return b"\0" in data[:BINARY_SNIFF_BYTES]


def decode_utf8(data: bytes) -> str | None:
    """``data`` as text, or ``None`` when it is not valid UTF-8 (a BOM is kept)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def language_ok(language: str, options: FilterOptions) -> bool:
    """Keep a file of ``language`` (``""`` = unknown) under ``options.languages``."""
    if not options.allowed_languages:
        return language != ""
    if "all" in options.allowed_languages:
        return True
    return language.lower() in options.allowed_languages


def before_size_ok(before: str, max_chars: int) -> bool:
    """``len(before) <= max_chars``."""
    return len(before) <= max_chars


def diff_size_ok(diff: str, max_chars: int) -> bool:
    """``len(diff) <= max_chars`` (an empty diff is dropped earlier, as ``DROP_NO_CHANGE``)."""
    return len(diff) <= max_chars


def token_count_ok(n_tokens: int, max_tokens: int | None) -> bool:
    """``n_tokens <= max_tokens`` (always ``True`` without a limit)."""
    return max_tokens is None or n_tokens <= max_tokens


def dedup_key(before: str, diff: str) -> bytes:
    """A 16-byte digest of ``(before, diff)``: equal for exact duplicates only."""
    h = hashlib.blake2b(digest_size=16)
    h.update(before.encode("utf-8", "surrogatepass"))
    h.update(b"\0\xff\0")  # cannot occur in UTF-8, so the boundary is unambiguous
    h.update(diff.encode("utf-8", "surrogatepass"))
    return h.digest()


# ---------------------------------------------------------------- licences

#: The SPDX ids ``--licenses permissive`` stands for.
PERMISSIVE = ("MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Unlicense", "CC0-1.0", "0BSD", "Zlib", "BSL-1.0")

#: Names a licence file may have at the top of a repository (lower-cased).
LICENSE_FILE_NAMES = (
    "license", "license.txt", "license.md", "license.rst", "licence", "licence.txt", "licence.md",
    "copying", "copying.txt", "copying.md", "unlicense", "license-mit", "license.mit",
)

_SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+-]+)")

#: (SPDX id, phrases that must all appear), most specific first; matched lower-cased
#: with whitespace collapsed.
_LICENSE_PHRASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("AGPL-3.0", ("gnu affero general public license", "version 3")),
    ("LGPL-3.0", ("gnu lesser general public license", "version 3")),
    ("LGPL-2.1", ("gnu lesser general public license", "version 2.1")),
    ("GPL-3.0", ("gnu general public license", "version 3")),
    ("GPL-2.0", ("gnu general public license", "version 2")),
    ("MPL-2.0", ("mozilla public license", "2.0")),
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("BSL-1.0", ("boost software license",)),
    ("Unlicense", ("this is free and unencumbered software released into the public domain",)),
    ("CC0-1.0", ("cc0 1.0 universal",)),
    ("0BSD", ("permission to use, copy, modify, and/or distribute this software for any purpose with or without fee",
              "the software is provided \"as is\" and the author disclaims all warranties")),
    ("ISC", ("permission to use, copy, modify, and/or distribute this software for any purpose with or without fee",)),
    ("ISC", ("permission to use, copy, modify, and distribute this software for any purpose with or without fee",)),
    ("MIT", ("permission is hereby granted, free of charge, to any person obtaining a copy",)),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "names of its contributors")),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
    ("Zlib", ("this software is provided 'as-is', without any express or implied warranty",
              "altered source versions must be plainly marked")),
)


def detect_license(text: str) -> str:
    """The SPDX id of a licence file's text, or ``""`` when it is not recognised.

    An ``SPDX-License-Identifier:`` line wins; otherwise well-known phrases of
    each licence are looked for.
    """
    spdx = _SPDX_LINE.search(text)
    if spdx:
        return spdx.group(1).removesuffix("-only").removesuffix("-or-later")
    flat = " ".join(text.lower().split())
    for spdx_id, phrases in _LICENSE_PHRASES:
        if all(p in flat for p in phrases):
            # 0BSD differs from ISC only by lacking the copyright-notice condition.
            if spdx_id == "0BSD" and "copyright notice and this permission notice appear" in flat:
                continue
            return spdx_id
    return ""


def expand_licenses(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Expand ``permissive`` into :data:`PERMISSIVE`; other names pass through."""
    out: list[str] = []
    for name in names:
        out.extend(PERMISSIVE if name.lower() == "permissive" else (name,))
    return tuple(dict.fromkeys(out))


def license_ok(spdx_id: str, allowed: tuple[str, ...] | None) -> bool:
    """Keep a repository whose licence is ``spdx_id`` (``""``: none found) under ``allowed``."""
    if allowed is None:
        return True
    wanted = {a.lower() for a in expand_licenses(allowed)}
    return spdx_id != "" and spdx_id.lower() in wanted
