"""Shared fixtures: tiny real tokenizers and checkpoints, built once per test session.

Nothing is downloaded: the hub is switched off for the whole session, and
every model and tokenizer is made by :mod:`diffmodel.tiny` from
``tiny_texts``.

Fixtures
--------
``tiny_texts``      ~30 short rendered samples (``diffmodel.sample.render``):
                    Python, JavaScript, shell, Markdown, a new file, a CRLF
                    file, non-ASCII text, an edit that drops the final newline.
``tiny_tokenizer``  byte-level BPE trained on ``tiny_texts`` (EOS only, no pad).
``tiny_gpt2_dir``   folder with a saved tiny GPT-2 and its tokenizer.
``tiny_llama_dir``  folder with a saved tiny Llama and its tokenizer.
"""

from __future__ import annotations

import os
import tempfile

# Before anything imports huggingface_hub: tests must never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One inductor cache for the session, set as a user would set it, so that the compiled runs of the tests keep using it
# (--compile_cache auto would otherwise put each run's kernels under its own --cache_dir: a cold cache each time).
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "diffmodel_tests_inductor")

import pytest  # noqa: E402

from diffmodel.sample import render  # noqa: E402

#: Positions of the tiny checkpoints (and ``model_max_length`` of their tokenizers).
TINY_N_POSITIONS = 256
TINY_VOCAB = 384

_PY_FUNCS = [
    ("total", "items", "result = 0", "result += item"),
    ("count", "users", "n = 0", "n += 1"),
    ("biggest", "prices", "best = None", "best = price if best is None or price > best else best"),
    ("joined", "names", 'out = ""', "out += name"),
    ("product", "factors", "acc = 1", "acc *= factor"),
]


def _python_samples() -> list[str]:
    texts = []
    for fn, plural, init, step in _PY_FUNCS:
        single = plural[:-1]
        var = init.split()[0]
        before = f"def {fn}({plural}):\n    {init}\n    for {single} in {plural}:\n        {step}\n    return {var}\n"
        texts.append(render(
            f"src/{fn}.py", before, f"Add docstring to {fn}",
            f"@@ -1,3 +1,4 @@\n def {fn}({plural}):\n+    \"\"\"The {fn} of {plural}.\"\"\"\n     {init}\n     for {single} in {plural}:\n",
        ))
        texts.append(render(
            f"lib/{plural}_utils.py", before, f"Rename {var} to value in {fn}",
            f"@@ -1,5 +1,5 @@\n def {fn}({plural}):\n-    {init}\n+    {init.replace(var, 'value', 1)}\n"
            f"     for {single} in {plural}:\n-        {step}\n+        {step.replace(var, 'value')}\n-    return {var}\n+    return value\n",
        ))
        texts.append(render(
            f"{fn}.py", "", f"Add {fn}",
            "@@ -0,0 +1,5 @@\n" + "".join("+" + line + "\n" for line in before.splitlines()),
        ))
        texts.append(render(
            f"app/{fn}_loop.py", before.replace(f"in {plural}:", f"in {plural}[1:]:"), f"Fix off-by-one in {fn}: include the first {single}",
            f"@@ -1,5 +1,5 @@\n def {fn}({plural}):\n     {init}\n-    for {single} in {plural}[1:]:\n+    for {single} in {plural}:\n"
            f"         {step}\n     return {var}\n",
        ))
    return texts


def _other_samples() -> list[str]:
    js = "const LIMIT = 10;\n\nfunction first(xs) {\n  return xs.slice(0, LIMIT);\n}\n\nmodule.exports = { first };\n"
    sh = "#!/usr/bin/env bash\nset -e\n\nJOBS=4\nmake -j $JOBS\n"
    md = "# tool\n\nA small tool.\n\n## Install\n\n    pip install tool\n"
    crlf = "[core]\r\n    name = demo\r\n    debug = true\r\n"
    uni = "# Café ☕\n\nGrüße, 世界!\n"
    return [
        render("web/first.js", js, "Raise LIMIT to 20",
               "@@ -1,4 +1,4 @@\n-const LIMIT = 10;\n+const LIMIT = 20;\n \n function first(xs) {\n   return xs.slice(0, LIMIT);\n"),
        render("web/first.js", js, "Add a header comment",
               "@@ -1,3 +1,5 @@\n+// Helpers for lists.\n+\n const LIMIT = 10;\n \n function first(xs) {\n"),
        render("scripts/build.sh", sh, "Quote JOBS",
               "@@ -2,4 +2,4 @@\n set -e\n \n JOBS=4\n-make -j $JOBS\n+make -j \"$JOBS\"\n"),
        render("scripts/build.sh", sh, "Fail on unset variables",
               "@@ -1,5 +1,5 @@\n #!/usr/bin/env bash\n-set -e\n+set -euo pipefail\n \n JOBS=4\n make -j $JOBS\n"),
        render("README.md", md, "Add usage section",
               "@@ -5,3 +5,7 @@\n ## Install\n \n     pip install tool\n+\n+## Usage\n+\n+    tool run\n"),
        render("README.md", md, "Fix typo", "@@ -1,3 +1,3 @@\n # tool\n \n-A small tool.\n+A tiny tool.\n"),
        render("config.ini", crlf, "Turn debug off",
               "@@ -1,3 +1,3 @@\n [core]\r\n     name = demo\r\n-    debug = true\r\n+    debug = false\r\n"),
        render("docs/café.md", uni, "Grüße auf Englisch", "@@ -1,3 +1,3 @@\n # Café ☕\n \n-Grüße, 世界!\n+Greetings, 世界!\n"),
        render("settings.py", "VALUE = 1\nOTHER = 2\n", "Drop the final newline",
               "@@ -1,2 +1,2 @@\n VALUE = 1\n-OTHER = 2\n+OTHER = 2\n\\ No newline at end of file\n"),
        render("empty_message.py", "x = 1\n", "", "@@ -1 +1 @@\n-x = 1\n+x = 2\n"),
    ]


def make_tiny_texts() -> list[str]:
    """The texts behind ``tiny_texts`` (a plain function, for use outside fixtures)."""
    return _python_samples() + _other_samples()


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return make_tiny_texts()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_texts):
    from diffmodel.tiny import train_tokenizer

    return train_tokenizer(tiny_texts, vocab_size=TINY_VOCAB, model_max_length=TINY_N_POSITIONS)


def _checkpoint(tmp_path_factory, arch: str, texts: list[str]):
    from diffmodel.tiny import save_tiny_checkpoint

    out = tmp_path_factory.mktemp(f"tiny_{arch}")
    return save_tiny_checkpoint(out, arch, texts, vocab_size=TINY_VOCAB, n_positions=TINY_N_POSITIONS, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_texts):
    return _checkpoint(tmp_path_factory, "gpt2", tiny_texts)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_texts):
    return _checkpoint(tmp_path_factory, "llama", tiny_texts)


@pytest.fixture
def non_strict_fusion():
    """inductor's setting that ``loss_logits.unguarded_positions`` turns on, off for the test and as it was after it
    (pytest's monkeypatch deletes settings of torch's config proxies on undo)."""
    import torch._inductor.config

    from diffmodel.train import loss_logits

    triton, name = torch._inductor.config.triton, loss_logits.NON_STRICT_FUSION
    before = getattr(triton, name)
    setattr(triton, name, False)
    yield lambda: getattr(triton, name)
    setattr(triton, name, before)
