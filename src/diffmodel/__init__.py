"""diffmodel: train, run and evaluate diff models.

A diff model reads a file, its name and a commit message, and writes the
unified diff that makes the change. See ``diffmodel.sample`` for the text
format every part of the package shares.
"""

__version__ = "0.1.0"
