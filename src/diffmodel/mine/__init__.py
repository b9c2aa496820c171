"""Mining: git history (and CommitPack-style rows) -> diff samples on disk.

The flow, one module per step::

    repos.find_repositories / open_repository / list_commits   which repositories, which commits
    git.CatFile, git.changed_files, git.parse_commit           read commits and blobs through the git CLI
    samples.mine_commits                                        changed files -> sample rows (filters.py, languages.py)
    convert.convert_rows                                        CommitPack-style rows -> the same sample rows
    split.assign_split                                          train / validation / test by a hash of a key
    shards.ShardWriter                                          size-bounded jsonl.zst shards, complete or invisible
    run.mine                                                    the job: workers, dedup, shards, resume, manifest

``diffmodel mine`` (:mod:`diffmodel.commands.mine`) parses its flags into a
:class:`~diffmodel.mine.run.MineConfig` and calls :func:`~diffmodel.mine.run.mine`.

Invariants:
- Nothing here imports torch; ``transformers`` is imported only to count
  tokens when ``--tokenizer_name`` is given.
- The rows written are a function of the repositories and the options: the
  same inputs give the same shards, whatever the number of workers.
"""
