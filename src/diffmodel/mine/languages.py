"""Language of a file, from its name.

``language_of(path)`` looks at the file name first (``Makefile``,
``Dockerfile``), then at the extension, case-insensitively. A name it does not
know gives ``""``, which the default language filter of ``diffmodel mine``
drops.

Invariants:
- Pure and cheap: only the path is looked at, never the contents.
- Every language name is one word or a fixed spelling (``C++``, ``C#``), so
  ``--languages`` can name it; matching is case-insensitive.
"""

from __future__ import annotations

import difflib
import posixpath

from diffmodel.errors import did_you_mean

#: Whole file names (lower-cased) that tell the language without an extension.
BY_FILENAME: dict[str, str] = {
    "makefile": "Makefile",
    "gnumakefile": "Makefile",
    "dockerfile": "Dockerfile",
    "containerfile": "Dockerfile",
    "cmakelists.txt": "CMake",
    "rakefile": "Ruby",
    "gemfile": "Ruby",
    "vagrantfile": "Ruby",
    "jenkinsfile": "Groovy",
    "build": "Starlark",
    "build.bazel": "Starlark",
    "workspace": "Starlark",
    ".bashrc": "Shell",
    ".zshrc": "Shell",
    ".profile": "Shell",
}

#: Extensions (lower-cased, without the dot) and their language.
BY_EXTENSION: dict[str, str] = {
    "py": "Python", "pyi": "Python", "pyx": "Cython", "pxd": "Cython",
    "ipynb": "Jupyter",
    "c": "C", "h": "C",
    "cc": "C++", "cpp": "C++", "cxx": "C++", "c++": "C++", "hh": "C++", "hpp": "C++", "hxx": "C++", "inl": "C++",
    "cu": "CUDA", "cuh": "CUDA",
    "m": "Objective-C", "mm": "Objective-C",
    "cs": "C#",
    "java": "Java",
    "kt": "Kotlin", "kts": "Kotlin",
    "scala": "Scala", "sc": "Scala",
    "groovy": "Groovy", "gradle": "Groovy",
    "clj": "Clojure", "cljs": "Clojure", "cljc": "Clojure", "edn": "Clojure",
    "go": "Go",
    "rs": "Rust",
    "swift": "Swift",
    "js": "JavaScript", "mjs": "JavaScript", "cjs": "JavaScript", "jsx": "JavaScript",
    "ts": "TypeScript", "tsx": "TypeScript", "mts": "TypeScript", "cts": "TypeScript",
    "vue": "Vue", "svelte": "Svelte",
    "html": "HTML", "htm": "HTML",
    "css": "CSS", "scss": "SCSS", "sass": "SCSS", "less": "Less",
    "php": "PHP",
    "rb": "Ruby", "erb": "Ruby", "gemspec": "Ruby",
    "pl": "Perl", "pm": "Perl", "t": "Perl",
    "lua": "Lua",
    "r": "R",
    "jl": "Julia",
    "hs": "Haskell", "lhs": "Haskell",
    "ml": "OCaml", "mli": "OCaml",
    "fs": "F#", "fsi": "F#", "fsx": "F#",
    "ex": "Elixir", "exs": "Elixir",
    "erl": "Erlang", "hrl": "Erlang",
    "elm": "Elm",
    "dart": "Dart",
    "zig": "Zig",
    "nim": "Nim",
    "d": "D",
    "f": "Fortran", "f90": "Fortran", "f95": "Fortran", "f03": "Fortran", "for": "Fortran",
    "pas": "Pascal",
    "ada": "Ada", "adb": "Ada", "ads": "Ada",
    "lisp": "Lisp", "el": "Lisp", "scm": "Scheme", "rkt": "Racket",
    "v": "Verilog", "sv": "SystemVerilog", "vhd": "VHDL", "vhdl": "VHDL",
    "sh": "Shell", "bash": "Shell", "zsh": "Shell", "fish": "Shell", "ksh": "Shell",
    "ps1": "PowerShell", "psm1": "PowerShell",
    "bat": "Batchfile", "cmd": "Batchfile",
    "sql": "SQL",
    "cmake": "CMake", "mk": "Makefile", "mak": "Makefile",
    "bzl": "Starlark",
    "nix": "Nix",
    "tf": "HCL", "hcl": "HCL",
    "proto": "Protobuf",
    "graphql": "GraphQL", "gql": "GraphQL",
    "tex": "TeX", "sty": "TeX", "bib": "BibTeX",
    "md": "Markdown", "markdown": "Markdown",
    "rst": "reStructuredText",
    "adoc": "AsciiDoc",
    "txt": "Text",
    "json": "JSON", "jsonl": "JSON",
    "yaml": "YAML", "yml": "YAML",
    "toml": "TOML",
    "ini": "INI", "cfg": "INI", "conf": "INI",
    "xml": "XML", "xsd": "XML", "xsl": "XML",
    "svg": "SVG",
    "csv": "CSV", "tsv": "CSV",
    "vim": "Vim",
    "asm": "Assembly", "s": "Assembly",
    "sol": "Solidity",
    "thrift": "Thrift",
    "coffee": "CoffeeScript",
    "hx": "Haxe",
    "cr": "Crystal",
    "purs": "PureScript",
    "agda": "Agda", "idr": "Idris", "lean": "Lean", "coq": "Coq",
    "awk": "Awk",
    "tcl": "Tcl",
}


#: Every language :func:`language_of` gives (what ``--languages`` can name, besides ``all``).
LANGUAGES: frozenset[str] = frozenset(BY_FILENAME.values()) | frozenset(BY_EXTENSION.values())


def unknown_languages(names) -> list[str]:
    """One message per name in ``names`` that is neither a known language nor ``all`` (any case),
    with the close matches (the language of an extension given for a name).

    >>> unknown_languages(["python", "Rust", "py"])
    ['--languages py: not a known language (did you mean Python?); the names are listed in docs/mine.md']
    """
    known = {name.lower(): name for name in sorted(LANGUAGES)}
    messages = []
    for name in names:
        if name.lower() in known or name.lower() == "all":
            continue
        close = ([BY_EXTENSION[name.lower()]] if name.lower() in BY_EXTENSION
                 else [known[m] for m in difflib.get_close_matches(name.lower(), known, n=3)])
        messages.append(f"--languages {name}: not a known language{did_you_mean(close, ', ')}; the names are listed in docs/mine.md")
    return messages


def language_of(path: str) -> str:
    """The language of ``path`` from its name or extension; ``""`` when unknown.

    >>> language_of("src/app/main.py"), language_of("Makefile"), language_of("logo.png")
    ('Python', 'Makefile', '')
    """
    base = posixpath.basename(path).lower()
    if base in BY_FILENAME:
        return BY_FILENAME[base]
    _, dot, ext = base.rpartition(".")
    return BY_EXTENSION.get(ext, "") if dot else ""

