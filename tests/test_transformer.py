"""The encoder-decoder Transformer: equal to Hugging Face MarianMT, causal, padding-invariant, trainable, counted."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import MarianConfig, MarianMTModel

from llmbook.config import count_parameters
from llmbook.decoding import beam_search, greedy_decode
from llmbook.positional import sinusoidal_encoding
from llmbook.transformer import (
    PRESETS,
    Transformer,
    TransformerConfig,
    load_hf_marian_state_dict,
    marian_key_map,
    next_token_logits_fn,
    transformer_parameter_count,
)

V, D, N, PAD, EOS, CONTEXT = 40, 32, 2, 1, 2, 24
TINY = PRESETS["tiny"]


def marian_pair(attn_implementation: str = "sdpa") -> tuple[MarianMTModel, Transformer]:
    """A tiny random MarianMTModel and our Transformer with its weights, loaded through the one key map.

    The Marian config matches the paper: post-LN, ReLU, embeddings times sqrt(D) (scale_embedding), one embedding
    matrix shared by encoder, decoder and lm_head, sinusoidal positions starting at 0 (Marian has no position offset,
    unlike BART), LayerNorm eps 1e-5. Marian starts decoding from pad_token_id (decoder_start_token_id), so target
    inputs below begin with PAD; our decoder masks only the future, never target padding, so that is fine.
    """
    config = MarianConfig(
        vocab_size=V, d_model=D, encoder_layers=N, decoder_layers=N, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=CONTEXT,
        activation_function="relu", scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=EOS,
        forced_eos_token_id=None, dropout=0.0, init_std=0.2, attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    marian = MarianMTModel(config).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0); perturb them so a swapped norm would show
        for name, p in marian.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    ours = Transformer(TransformerConfig(
        src_vocab_size=V, tgt_vocab_size=V, context_length=CONTEXT, d_model=D, n_heads=4, n_layers=N, d_ff=64,
        dropout=0.0, pad_id=PAD,
    ))
    unused = load_hf_marian_state_dict(ours, marian.state_dict())
    assert unused == sorted(k for k in marian.state_dict() if k.endswith(("shared.weight", "final_logits_bias",
                                                                           "embed_positions.weight")))
    return marian, ours.eval()


def source_and_target() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, V, (3, 7), generator=g)
    src[1, 5:] = PAD  # a padded source row
    tgt = torch.randint(3, V, (3, 6), generator=g)
    tgt[:, 0] = PAD  # Marian's decoder start token
    return src, tgt


def test_marian_sinusoids_are_ours_reordered():
    # Marian: [sin(angle_0..angle_{D/2-1}) | cos(same)]; the paper: sin, cos interleaved. Same features, reordered.
    marian, ours = marian_pair()
    table = marian.model.encoder.embed_positions.weight.detach()  # (CONTEXT, D)
    order = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], dim=1).flatten()
    assert_close(table[:, order], sinusoidal_encoding(CONTEXT, D), rtol=0, atol=1e-6)
    assert not torch.allclose(table, sinusoidal_encoding(CONTEXT, D))


def test_logits_equal_marian():
    marian, ours = marian_pair()
    src, tgt = source_and_target()
    assert not marian.final_logits_bias.any()  # Marian adds this buffer to the logits; it is zero, we have none
    with torch.no_grad():
        expected = marian(input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt).logits
        got = ours(src, tgt)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_attention_weights_equal_marian():
    marian, ours = marian_pair(attn_implementation="eager")  # eager attention returns its weights
    src, tgt = source_and_target()
    with torch.no_grad():
        out = marian(input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt, output_attentions=True)
        logits = ours(src, tgt)
        weights = ours.attention_weights(src, tgt)
        hidden = ours.hidden_states(src, tgt)
    assert_close(logits, out.logits, rtol=1e-4, atol=1e-5)
    assert_close(ours.lm_head(hidden), logits)  # forward is the output layer on hidden_states
    for theirs, mine in ((out.encoder_attentions, weights.encoder), (out.decoder_attentions, weights.decoder_self),
                         (out.cross_attentions, weights.cross)):
        assert len(mine) == N
        for a, b in zip(theirs, mine, strict=True):
            assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert weights.cross[0].shape == (3, 4, 6, 7)


def test_greedy_decoding_equals_marian_generate():
    # Marian's generate caches keys and values; ours recomputes the prefix. Marian pads finished rows with PAD,
    # greedy_decode with EOS, so positions after the first EOS are compared after mapping EOS padding to PAD.
    marian, ours = marian_pair()
    src, _ = source_and_target()
    with torch.no_grad():
        expected = marian.generate(input_ids=src, attention_mask=(src != PAD).long(), num_beams=1, do_sample=False,
                                   max_new_tokens=12)
    got = greedy_decode(next_token_logits_fn(ours, src), torch.full((3, 1), PAD), 12, eos_id=EOS)
    after_eos = (got == EOS).long().cumsum(dim=1).roll(1, dims=1).clamp(max=1).bool()
    after_eos[:, 0] = False
    assert torch.equal(got.masked_fill(after_eos, PAD), expected)


def test_marian_key_map_covers_every_weight_and_rejects_mismatches():
    marian, ours = marian_pair()
    key_map = marian_key_map(N)
    assert set(key_map) == set(ours.state_dict())
    assert set(key_map.values()) | {"model.shared.weight", "final_logits_bias", "model.encoder.embed_positions.weight",
                                    "model.decoder.embed_positions.weight"} == set(marian.state_dict())
    deeper = Transformer(dataclasses.replace(ours.config, n_layers=1))
    with pytest.raises(ValueError, match="not in the key map"):
        load_hf_marian_state_dict(deeper, marian.state_dict())
    state = dict(marian.state_dict(), final_logits_bias=torch.ones(1, V))
    with pytest.raises(ValueError, match="final_logits_bias"):
        load_hf_marian_state_dict(ours, state)
    with pytest.raises(ValueError, match="norm_first=False"):
        load_hf_marian_state_dict(Transformer(dataclasses.replace(ours.config, norm_first=True)), marian.state_dict())
    missing = {k: v for k, v in marian.state_dict().items() if k != "model.decoder.layers.1.fc1.bias"}
    with pytest.raises(ValueError, match=r"lacks weights for: \['model.decoder.layers.1.fc1.bias'\]"):
        load_hf_marian_state_dict(ours, missing)
    with pytest.raises(ValueError, match="fc1.weight has shape"):
        load_hf_marian_state_dict(Transformer(dataclasses.replace(ours.config, d_ff=48)), marian.state_dict())
    with pytest.raises(TypeError, match="model must be a Transformer"):
        load_hf_marian_state_dict(torch.nn.Linear(2, 2), marian.state_dict())


@pytest.mark.parametrize("norm_first, positions", [(False, "sinusoidal"), (True, "learned")])
def test_changing_future_targets_changes_only_later_logits(norm_first, positions):
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(TINY, norm_first=norm_first, positions=positions)).eval()
    src, tgt = torch.randint(1, 64, (2, 9)), torch.randint(1, 64, (2, 8))
    changed = tgt.clone()
    changed[:, 5] = (tgt[:, 5] + 1) % 63 + 1
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert (a[:, 5:] - b[:, 5:]).abs().amax(dim=-1).min() > 1e-4  # every later position moves


def test_source_padding_does_not_change_outputs():
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(TINY, attn_impl="manual")).eval()
    src, tgt = torch.randint(1, 64, (2, 6)), torch.randint(1, 64, (2, 5))
    padded = torch.cat([src, torch.full((2, 4), TINY.pad_id)], dim=1)
    with torch.no_grad():
        assert_close(model(padded, tgt), model(src, tgt), rtol=1e-5, atol=1e-5)
        # a row padded inside a batch gives what it gives alone
        batch = torch.cat([padded[:1], torch.randint(1, 64, (1, 10))])
        assert_close(model(batch, tgt)[0], model(src[:1], tgt[:1])[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(src[:, :5], tgt), model(src, tgt), atol=1e-3)  # the last token does matter


def test_manual_and_fused_attention_give_the_same_model():
    torch.manual_seed(0)
    manual = Transformer(dataclasses.replace(TINY, attn_impl="manual")).eval()
    fused = Transformer(dataclasses.replace(TINY, attn_impl="fused")).eval()
    fused.load_state_dict(manual.state_dict())
    src, tgt = torch.randint(1, 64, (2, 7)), torch.randint(1, 64, (2, 6))
    src[0, -2:] = TINY.pad_id
    with torch.no_grad():
        assert_close(fused(src, tgt), manual(src, tgt), rtol=1e-5, atol=1e-5)


def test_initial_loss_is_close_to_ln_vocab_size():
    # Tied embeddings ~ N(0, 1/D) against a LayerNorm-ed decoder output give logits of variance about 1, and for
    # Gaussian logits E[cross-entropy] = ln V + Var/2: a little above ln V, as with the paper's initialisation.
    torch.manual_seed(0)
    model = Transformer(TINY)
    src, tgt = torch.randint(1, 64, (32, 12)), torch.randint(1, 64, (32, 11))
    with torch.no_grad():
        logits = model(src, tgt[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten()).item()
    variance = logits.var().item()
    assert 0.5 < variance < 1.5
    assert abs(loss - (math.log(64) + variance / 2)) < 0.15
    assert abs(loss - math.log(64)) < 0.8


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(TINY)
    src, tgt = torch.randint(1, 64, (4, 8)), torch.randint(1, 64, (4, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(40):
        loss = F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_next_token_logits_fn_matches_the_full_pass_and_drives_beam_search():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    src, tgt = torch.randint(1, 64, (2, 7)), torch.randint(1, 64, (2, 5))
    fn = next_token_logits_fn(model, src)
    with torch.no_grad():
        assert_close(fn(tgt), model(src, tgt)[:, -1], rtol=1e-5, atol=1e-5)
    one = next_token_logits_fn(model, src[0])  # a single source is expanded to any number of beams
    hyps = beam_search(one, tgt[0, :1], beam_width=3, max_new_tokens=4, eos_id=2)
    assert len(hyps) == 3 and hyps[0].score >= hyps[-1].score
    with pytest.raises(ValueError, match="source batch"):
        fn(tgt.repeat(2, 1))
    with pytest.raises(ValueError, match="eval mode"):
        next_token_logits_fn(model.train(), src)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_closed_form_matches_presets(name):
    with torch.device("meta"):  # no memory for the 214M-parameter big model
        model = Transformer(PRESETS[name])
    assert count_parameters(model) == transformer_parameter_count(PRESETS[name])


@pytest.mark.parametrize("change", [dict(tie_embeddings=False, tgt_vocab_size=50), dict(positions="learned"),
                                    dict(positions="none"), dict(norm_first=True), dict(activation="gelu", d_ff=48)])
def test_parameter_count_closed_form_matches_each_switch(change):
    config = dataclasses.replace(TINY, **change)
    assert count_parameters(Transformer(config)) == transformer_parameter_count(config)


def test_parameter_counts_against_the_paper():
    # Table 3: base 65M, big 213M. Ours: 63.1M and 214.2M (see the transformer module docstring).
    base, big = (transformer_parameter_count(PRESETS[n]) for n in ("base", "big"))
    assert base == 63_082_496 and big == 214_245_376
    assert abs(base / 65e6 - 1) < 0.04 and abs(big / 213e6 - 1) < 0.01


def test_without_positions_the_source_is_a_bag_of_words():
    # Attention is blind to order: with positions="none", shuffling the source leaves every logit unchanged, and
    # the same shuffle changes them once positions are added.
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(1, 64, (2, 7), generator=g), torch.randint(1, 64, (2, 5), generator=g)
    shuffled = src[:, torch.randperm(7, generator=g)]
    for positions, same in (("none", True), ("sinusoidal", False)):
        torch.manual_seed(0)
        model = Transformer(dataclasses.replace(TINY, positions=positions)).eval()
        with torch.no_grad():
            moved = (model(src, tgt) - model(shuffled, tgt)).abs().max().item()
        assert (moved < 1e-5) == same, (positions, moved)


def test_tied_embeddings_are_one_matrix():
    model = Transformer(TINY)
    assert model.src_tok_emb.weight is model.tgt_tok_emb.weight is model.lm_head.weight
    untied = Transformer(dataclasses.replace(TINY, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tgt_tok_emb.weight


@pytest.mark.parametrize("change, message", [
    (dict(n_heads=5), "divisible"), (dict(d_model=0), "d_model must be a positive integer"),
    (dict(positions="rotary"), r"positions must be one of \('sinusoidal', 'learned', 'none'\)"),
    (dict(activation="swish"), "activation must be one of"), (dict(attn_impl="flash"), "attn_impl must be one of"),
    (dict(dropout=1.0), r"dropout must be a real number in \[0, 1\)"), (dict(dropout="0.1"), "dropout must be a real"),
    (dict(tgt_vocab_size=50), "tie_embeddings"),
    (dict(pad_id=64), r"pad_id must be an integer in \[0, min\(src_vocab_size, tgt_vocab_size\)=64\)"),
    (dict(pad_id=0.5), r"pad_id must be an integer in \[0, .*got 0.5 \(float\)"), (dict(pad_id=True), "pad_id"),
    (dict(n_layers=2.0), r"n_layers must be a positive integer, got 2.0 \(float\)"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps must be a real number > 0"),
    (dict(tie_embeddings=1), "tie_embeddings must be True or False"),
])
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def test_input_errors():
    model = Transformer(TINY).eval()
    src, tgt = torch.randint(1, 64, (2, 5)), torch.randint(1, 64, (2, 4))
    with pytest.raises(ValueError, match="more than context_length=32"):
        model(torch.randint(1, 64, (2, 33)), tgt)
    with pytest.raises(ValueError, match="more than context_length=32"):
        model(src, torch.randint(1, 64, (2, 33)))
    with pytest.raises(ValueError, match=r"src must hold ids in \[0, src_vocab_size=64\), got values from 64 to 64"):
        model(torch.full((2, 5), 64), tgt)
    with pytest.raises(ValueError, match=r"tgt must hold ids in \[0, tgt_vocab_size=64\), got values from -1"):
        model(src, torch.full((2, 4), -1))
    with pytest.raises(ValueError, match=r"src must have shape \(B, T\), got \(5,\)"):
        model(src[0], tgt)
    for dtype in (torch.float32, torch.uint8, torch.int16):
        with pytest.raises(TypeError, match=f"src must hold integer token ids of dtype torch.int64 or .*{dtype}"):
            model(src.to(dtype), tgt)
        with pytest.raises(TypeError, match=f"tgt must hold integer token ids of dtype torch.int64 or .*{dtype}"):
            model.attention_weights(src, tgt.to(dtype))
    assert model(src.int(), tgt.int()).shape == (2, 4, 64)  # int32 is accepted, as by nn.Embedding
    with pytest.raises(ValueError, match="same batch size"):
        model(src, tgt[:1])
    with pytest.raises(ValueError, match="memory must have shape"):
        model.decode(tgt, torch.randn(2, 5, 16), model.source_mask(src))


@pytest.mark.parametrize("attn_impl", ["manual", "fused"])
def test_a_source_of_padding_only_is_an_error_not_nan(attn_impl):
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(TINY, attn_impl=attn_impl)).eval()
    src, tgt = torch.randint(1, 64, (2, 5)), torch.randint(1, 64, (2, 4))
    src[1] = TINY.pad_id
    message = r"every src row needs a token other than pad_id=0; rows \[1\] are all padding"
    with pytest.raises(ValueError, match=message):
        model(src, tgt)
    with pytest.raises(ValueError, match=message):
        model.attention_weights(src, tgt)
    with pytest.raises(ValueError, match=message):
        next_token_logits_fn(model, src)
    memory = model.encode(src[:1])
    blind = torch.zeros(1, 1, 1, 5, dtype=torch.bool)  # a hand-made mask that hides every source token
    with pytest.raises(ValueError, match=r"every src_mask row needs a True"):
        model.decode(tgt[:1], memory, blind)
    with pytest.raises(ValueError, match=r"every src_mask row needs a True"):
        model.encode(src[:1], blind)
    with pytest.raises(ValueError, match="src_mask must be a boolean"):
        model.decode(tgt[:1], memory, blind.long())
