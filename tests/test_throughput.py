"""Training speed in the log: sum of squared sequence lengths, FLOPs, peaks and the logged rates."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from diffmodel.train.throughput import ModelShape, model_flops, model_shape, peak_flops, rates, square_sum


def test_square_sum_of_packed_rows_is_read_from_positions():
    # row 0: samples of 3 and 2 and a pad segment of 1; row 1: samples of 4 and 2
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert int(square_sum({"input_ids": torch.zeros(2, 6), "position_ids": positions})) == 9 + 4 + 1 + 16 + 4


def test_square_sum_from_boundaries_masks_and_plain_rows():
    cu = torch.tensor([0, 3, 5, 6, 10, 12], dtype=torch.int32)
    assert int(square_sum({"input_ids": torch.zeros(1, 12), "cu_seq_lens_q": cu, "position_ids": torch.zeros(1, 12)})) == 9 + 4 + 1 + 16 + 4
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # a left-padded row of 2 and a full row of 4
    assert int(square_sum({"input_ids": torch.zeros(2, 4), "attention_mask": mask, "position_ids": torch.zeros(2, 4)})) == 4 + 16
    assert int(square_sum({"input_ids": torch.zeros(3, 5)})) == 3 * 25


def test_model_shape_leaves_out_the_input_embedding_and_keeps_a_tied_projection():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    shape = model_shape(llama)
    total = sum(p.numel() for p in llama.parameters())
    assert shape == ModelShape(total - 100 * 16, 3, 16)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=2, n_head=2))  # tied
    assert model_shape(gpt2) == ModelShape(sum(p.numel() for p in gpt2.parameters()), 2, 16)
    assert model_shape(torch.nn.Linear(2, 2)) is None


def test_attention_wider_than_the_hidden_size_counts_its_width():
    """Heads of 32 x 4 = 128 over a hidden size of 16: the attention term uses 128, the parameters are the model's."""
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False))
    assert llama.model.layers[0].self_attn.q_proj.out_features == 128
    shape = model_shape(llama)
    assert shape == ModelShape(sum(p.numel() for p in llama.parameters()) - 100 * 16, 2, 16, 128)
    assert model_flops(shape, tokens=10, squares=30) == 6 * shape.params * 10 + 12 * 2 * 128 * 30


def test_flops_and_rates():
    shape = ModelShape(params=1000, layers=2, hidden=8)
    assert model_flops(shape, tokens=10, squares=30) == 6 * 1000 * 10 + 12 * 2 * 8 * 30
    got = rates(tokens=400, loss_tokens=100, squares=30, seconds=2.0, shape=shape, devices=2, peak=1e6)
    flops = 6 * 1000 * 400 + 12 * 2 * 8 * 30
    assert got == {"tokens_per_second": 200.0, "loss_tokens_per_second": 50.0, "mfu": round(flops / 2.0 / 2 / 1e6, 4)}
    assert "mfu" not in rates(400, 100, 30, 2.0, shape, 1, None)
    assert rates(400, 100, 30, 0.0, shape, 1, 1e6) == {}


def test_peaks_by_device_name_precision_and_override():
    assert peak_flops("NVIDIA H200", True, env={}) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", True, env={}) == 756e12
    assert peak_flops("NVIDIA H100 80GB HBM3", True, env={}) == 989e12
    assert peak_flops("NVIDIA H200", False, env={}) is None  # fp32 training: the half-precision peak does not apply
    assert peak_flops("Tesla T4", True, env={}) is None
    assert peak_flops(None, False, env={"DIFFMODEL_PEAK_TFLOPS": "2.5"}) == 2.5e12
