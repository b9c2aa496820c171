"""Inputs of benchmarks/constrained_decoding.py: a 16k byte-level BPE trained on the mined training samples, 400 held-out rows.

    diffmodel mine TRAIN_REPOS... -o .fetched/train_mined4 --languages Python --max_before_chars 6000 \
        --max_diff_chars 3000 --validation_fraction 0 --test_fraction 0
    diffmodel mine EVAL_REPOS... -o .fetched/eval_mined   (the same flags)
    PYTHONPATH=src python benchmarks/decoding_data.py    (writes .fetched/tok16k and .fetched/heldout400.jsonl)
"""
import glob, json, random, zstandard
from diffmodel.sample import render_row
from diffmodel.tiny import train_tokenizer

def rows(folder):
    for f in sorted(glob.glob(f"{folder}/train/*.jsonl.zst")):
        with zstandard.open(f, "rt") as fh:
            for line in fh:
                yield json.loads(line)

train = list(rows(".fetched/train_mined4"))
texts = [render_row(r) for r in train]
tok = train_tokenizer(texts, vocab_size=16384, model_max_length=2048)
tok.save_pretrained(".fetched/tok16k")
lengths = [len(t) for t in tok(texts[:2000])["input_ids"]]
print("train samples", len(train), "mean tokens", sum(lengths) / len(lengths))
ev = list(rows(".fetched/eval_mined"))
random.Random(0).shuffle(ev)
keep = []
for r in ev:
    n = len(tok(render_row(r))["input_ids"])
    if n < 1500 and r.get("diff"):
        keep.append(r)
    if len(keep) == 400:
        break
with open(".fetched/heldout400.jsonl", "w") as fh:
    for r in keep:
        fh.write(json.dumps(r) + "\n")
print("held-out", len(keep))
