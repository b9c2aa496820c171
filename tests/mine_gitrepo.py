"""Build real git repositories for the mining tests, deterministically.

Author, committer and dates are fixed through the environment, and global or
system git configuration is ignored, so the same script gives the same commit
ids on every machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BASE_TIME = 1_700_000_000  # 2023-11-14T22:13:20Z


class GitRepo:
    """A work tree driven through the ``git`` command line."""

    def __init__(self, path: Path, init: bool = True) -> None:
        self.path = Path(path)
        self.tick = 0
        if init:
            self.path.mkdir(parents=True, exist_ok=True)
            self.git("init", "-q", "-b", "main")

    def env(self) -> dict[str, str]:
        when = f"{BASE_TIME + 60 * self.tick} +0100"
        env = dict(os.environ)
        env.update({
            "GIT_AUTHOR_NAME": "Ada Lovelace", "GIT_AUTHOR_EMAIL": "ada@example.com", "GIT_AUTHOR_DATE": when,
            "GIT_COMMITTER_NAME": "Ada Lovelace", "GIT_COMMITTER_EMAIL": "ada@example.com",
            "GIT_COMMITTER_DATE": when, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
        })
        return env

    def git(self, *args: str, input: bytes | None = None) -> str:
        proc = subprocess.run(
            ["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", "-c", "protocol.file.allow=always",
             *args],
            cwd=self.path, env=self.env(), input=input, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode("utf-8", "replace").strip()

    def write(self, name: str, data: str | bytes) -> None:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)

    def commit(self, message: str, *, allow_empty: bool = False, author: str | None = None) -> str:
        """Stage everything and commit; returns the commit id."""
        self.tick += 1
        self.git("add", "-A")
        args = ["commit", "-q", "-m", message]
        if allow_empty:
            args.append("--allow-empty")
        if author:
            args.append(f"--author={author} <bot@example.com>")
        self.git(*args)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def show(self, commit: str, name: str) -> bytes:
        """The bytes of ``name`` at ``commit``."""
        proc = subprocess.run(["git", "cat-file", "blob", f"{commit}:{name}"], cwd=self.path, capture_output=True,
                              check=True)
        return proc.stdout


def build_story_repo(path: Path, submodule_source: Path | None = None) -> dict[str, str]:
    """A repository touching every case the miner handles; returns commit ids by label.

    adds, edits, a binary and a non-UTF-8 file, CRLF, a missing final newline,
    a rename with an edit, a deletion, an empty commit, a merge, a submodule,
    a mode-only change and a symlink.
    """
    r = GitRepo(path)
    ids: dict[str, str] = {}
    r.write("hello.py", "def greet(name):\n    return 'Hello ' + name\n\n\ndef shout(name):\n    return greet(name).upper()\n")
    r.write("README.md", "# Greeter\n\nSays hello.\n")
    r.write("notes.md", "first line\nsecond line\n")
    ids["add"] = r.commit("Add greeting module and readme")
    r.write("hello.py", "def greet(name):\n    return 'Hello, ' + name + '!'\n\n\ndef shout(name):\n    return greet(name).upper()\n")
    ids["edit"] = r.commit("Make the greeting friendlier")
    r.write("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    r.write("latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"))
    ids["binary"] = r.commit("Add logo image and a latin-1 note")
    r.write("config.ini", "[core]\r\nname = demo\r\ndebug = true\r\n")
    ids["crlf_add"] = r.commit("Add configuration with CRLF endings")
    r.write("config.ini", "[core]\r\nname = demo\r\ndebug = false\r\n")
    ids["crlf_edit"] = r.commit("Turn the debug flag off")
    r.write("notes.md", "first line\nsecond line changed")
    ids["no_newline"] = r.commit("Reword the notes without a final newline")
    r.git("mv", "hello.py", "greetings.py")
    r.write("greetings.py", "def greet(name):\n    return 'Hello, ' + name + '!'\n\n\ndef shout(name):\n    return greet(name).upper() + '!!'\n")
    ids["rename"] = r.commit("Rename hello module to greetings and shout louder")
    (r.path / "README.md").unlink()
    ids["delete"] = r.commit("Remove the readme file entirely")
    ids["empty"] = r.commit("Record an empty commit here", allow_empty=True)
    r.git("checkout", "-q", "-b", "feature")
    r.write("greetings.py", "def greet(name):\n    return 'Hello, ' + name + '!'\n\n\ndef shout(name):\n    return greet(name).upper() + '!!'\n\n\ndef bye(name):\n    return 'Bye ' + name\n")
    ids["feature"] = r.commit("Add a farewell function to greetings")
    r.git("checkout", "-q", "main")
    r.write("CHANGES.md", "# Changes\n\n- greetings\n")
    ids["main_side"] = r.commit("Start a changelog for users")
    r.tick += 1
    r.git("merge", "-q", "--no-ff", "-m", "Merge branch 'feature'", "feature")
    ids["merge"] = r.head()
    if submodule_source is not None:
        r.tick += 1
        r.git("submodule", "add", "-q", str(submodule_source), "vendor/lib")
        r.git("commit", "-q", "-m", "Vendor the helper library as a submodule")
        ids["submodule"] = r.head()
    os.chmod(r.path / "greetings.py", 0o755)
    ids["chmod"] = r.commit("Make the greetings module executable")
    os.symlink("greetings.py", r.path / "link.py")
    ids["symlink"] = r.commit("Add a link to the greetings module")
    return ids


def build_small_repo(path: Path, n: int, prefix: str = "mod", license_text: str | None = None) -> GitRepo:
    """``n`` commits, each adding or editing a distinct Python file (``n`` samples, no drops)."""
    r = GitRepo(path)
    if license_text is not None:
        r.write("LICENSE", license_text)
        r.commit("Add the licence of the project")
    for i in range(n):
        name = f"{prefix}_{i // 2}.py"
        body = f"def {prefix}_{i // 2}():\n    return {i}\n"
        if i % 2:
            body += f"\n\ndef helper_{i}():\n    return '{prefix}'\n"
        r.write(name, body)
        r.commit(f"Change {prefix} step number {i}")
    return r
