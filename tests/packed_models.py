"""Tiny models and packed samples shared by the tests that prove packing keeps samples apart.

``model(arch, attn)``: a 2-layer GPT-2 or Llama of :data:`VOCAB` ids, no
dropout, in float32 and train mode, with the given attention backend.
``samples()``: five (ids, labels) samples of 4 to 9 tokens, the first tokens
of each ignored. ``one_by_one`` / ``packed_rows`` / ``packed`` lay them out;
``sum_loss_and_grads`` gives the token-mean loss and gradients of a list of
batches, so any layout can be compared with the samples run one by one.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.preprocess.packing import best_fit_decreasing, pack_row
from diffmodel.train.collate import PackedCollator

X = IGNORE_INDEX
EOS, PAD = 1, 0
VOCAB = 50
#: (architecture, attention backend) pairs that keep packed samples apart on the CPU
BACKENDS = [("gpt2", "sdpa"), ("gpt2", "eager"), ("llama", "sdpa"), ("llama", "eager")]


def model(arch, attn):
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        m = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        m = LlamaForCausalLM(cfg)
    m.config._attn_implementation = attn
    m.config.use_cache = False
    return m.float().train()


def samples():
    g = torch.Generator().manual_seed(1)
    out = []
    for n, masked in [(6, 3), (9, 4), (4, 1), (7, 5), (5, 2)]:
        ids = torch.randint(2, VOCAB, (n,), generator=g).tolist()
        out.append((ids, [X] * masked + ids[masked:]))
    return out


def sum_loss_and_grads(m, batches):
    """Summed token loss over batches and its gradients (HF mean * number of loss tokens)."""
    m.zero_grad()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != X).sum())
        loss = m(**batch).loss * n
        loss.backward()
        total += loss.item()
        count += n
    grads = {k: p.grad.detach().clone() / count for k, p in m.named_parameters() if p.grad is not None}
    return total / count, grads


def one_by_one(samples):
    for ids, labels in samples:
        yield {"input_ids": torch.tensor([ids + [EOS]]), "labels": torch.tensor([labels + [EOS]])}


def packed_rows(samples, cap=20):
    """The samples packed into rows of at most ``cap`` tokens (best-fit decreasing), as lists."""
    lengths = [len(i) + 1 for i, _ in samples]
    return [pack_row([samples[i] for i in b], EOS) for b in best_fit_decreasing(lengths, cap)]


def packed(samples, cap=20, collator=None):
    """One batch of the packed rows, collated by ``collator`` (default: ``PackedCollator(PAD)``)."""
    return [(collator or PackedCollator(PAD))(packed_rows(samples, cap))]
