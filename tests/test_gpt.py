"""GPT-1 and GPT-2: equivalence with Hugging Face OpenAIGPT and GPT2, parameter counts, causality, the KV cache,
generation, fine-tuning inputs."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTModel

from llmbook.config import count_parameters
from llmbook.gpt import (
    GPT,
    PRESETS,
    GPTClassifier,
    GPTConfig,
    build_classification_input,
    build_pair_inputs,
    finetune_loss,
    gpt2_config,
    gpt_parameter_count,
    lm_loss,
    load_hf_gpt2_state_dict,
    load_hf_openai_gpt_state_dict,
    non_embedding_parameter_count,
    pad_batch,
)

TINY = PRESETS["tiny"]
START, DELIM, EXTRACT, PAD = 1, 2, 3, 0


def _hf_pair(attn_impl="manual"):
    """A random tiny HF OpenAIGPT, every parameter perturbed (biases, LayerNorms too), and ours loaded from it."""
    torch.manual_seed(0)
    hf_config = OpenAIGPTConfig(vocab_size=61, n_positions=20, n_embd=32, n_layer=2, n_head=4, afn="gelu",
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = OpenAIGPTLMHeadModel(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config = GPTConfig(vocab_size=61, context_length=20, d_model=32, n_heads=4, n_layers=2, d_ff=128, dropout=0.0,
                       attn_impl=attn_impl, layer_norm_eps=hf_config.layer_norm_epsilon)
    ours = GPT(config).eval()
    assert load_hf_openai_gpt_state_dict(ours, hf.state_dict()) == []
    return hf, ours


@pytest.mark.parametrize("attn_impl", ["manual", "fused"])
def test_logits_equal_hugging_face_openai_gpt(attn_impl):
    hf, ours = _hf_pair(attn_impl)
    tokens = torch.randint(0, 61, (3, 20))
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(ours(tokens), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(tokens[:, :7]), expected[:, :7], rtol=1e-5, atol=1e-5)


def test_hidden_states_and_attention_weights_equal_hugging_face():
    hf, ours = _hf_pair("manual")
    tokens = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        out = hf.transformer(tokens, output_attentions=True)
        h = ours.hidden_states(tokens)
        weights = ours.attention_weights(tokens)
        logits = ours(tokens)
    torch.testing.assert_close(h, out.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert len(weights) == 2
    for w, hf_w in zip(weights, out.attentions, strict=True):
        torch.testing.assert_close(w, hf_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, ours.lm_head(h))  # forward is the output layer on hidden_states
    assert logits.shape == (2, 12, 61)


def test_key_map_splits_the_fused_c_attn_and_transposes_conv1d():
    hf, ours = _hf_pair()
    c_attn = hf.transformer.h[1].attn.c_attn  # Conv1D: y = x @ W + b, W of shape (D, 3D)
    attn = ours.layers[1].self_attn
    torch.testing.assert_close(attn.W_q.weight, c_attn.weight[:, :32].t())
    torch.testing.assert_close(attn.W_k.weight, c_attn.weight[:, 32:64].t())
    torch.testing.assert_close(attn.W_v.bias, c_attn.bias[64:])
    torch.testing.assert_close(ours.layers[0].ff.W_1.weight, hf.transformer.h[0].mlp.c_fc.weight.t())
    assert ours.lm_head.weight is ours.tok_emb.weight


def test_key_map_accepts_a_bare_model_and_rejects_a_mismatch():
    hf, _ = _hf_pair()
    bare = OpenAIGPTModel(hf.config)
    bare.load_state_dict(hf.transformer.state_dict())
    ours = GPT(dataclasses.replace(TINY, vocab_size=61, context_length=20, d_ff=128))
    assert load_hf_openai_gpt_state_dict(ours, bare.state_dict()) == []
    torch.testing.assert_close(ours.tok_emb.weight, hf.transformer.tokens_embed.weight)
    deeper = GPT(dataclasses.replace(TINY, vocab_size=61, context_length=20, d_ff=128, n_layers=3))
    with pytest.raises(ValueError, match="lacks weights"):
        load_hf_openai_gpt_state_dict(deeper, hf.state_dict())
    shallower = GPT(dataclasses.replace(TINY, vocab_size=61, context_length=20, d_ff=128, n_layers=1))
    with pytest.raises(ValueError, match="different depth"):
        load_hf_openai_gpt_state_dict(shallower, hf.state_dict())
    with pytest.raises(ValueError, match="shape"):
        load_hf_openai_gpt_state_dict(GPT(dataclasses.replace(TINY, vocab_size=61, context_length=20)), hf.state_dict())
    with pytest.raises(ValueError, match="does not know"):
        load_hf_openai_gpt_state_dict(ours, {**hf.state_dict(), "extra.weight": torch.ones(1)})
    with_head = {**hf.state_dict(), "multiple_choice_head.summary.weight": torch.ones(1, 32)}
    assert load_hf_openai_gpt_state_dict(ours, with_head) == ["multiple_choice_head.summary.weight"]
    with pytest.raises(ValueError, match="norm_first"):
        load_hf_openai_gpt_state_dict(GPT(dataclasses.replace(TINY, norm_first=True)), hf.state_dict())


def test_gpt1_parameter_count_closed_form_meta_model_and_hugging_face():
    config = PRESETS["gpt1"]
    assert gpt_parameter_count(config) == 116_534_784  # "117M"
    with torch.device("meta"):
        ours = GPT(config)
        hf = OpenAIGPTLMHeadModel(OpenAIGPTConfig())
    assert count_parameters(ours) == 116_534_784
    assert count_parameters(hf) == 116_534_784


@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": False}, {"final_norm": True, "norm_first": True},
                                     {"d_ff": 48, "n_layers": 3}, {"d_ff": 0}, {"d_ff": 0, "norm_first": True}])
def test_parameter_count_closed_form_for_variants(changes):
    config = dataclasses.replace(TINY, **changes)
    assert count_parameters(GPT(config)) == gpt_parameter_count(config)


@pytest.mark.parametrize("norm_first", [True, False])
def test_attention_only_blocks_equal_blocks_whose_feed_forward_adds_nothing(norm_first):
    # d_ff = 0 leaves the feed-forward sub-layer out. Pre-LN: a block whose feed-forward outputs zero adds
    # nothing (x + 0), the same function. Post-LN: it still normalises once more, so the two differ.
    changes = dict(norm_first=norm_first, final_norm=norm_first, scaled_residual_init=norm_first)
    torch.manual_seed(0)
    attention_only = GPT(dataclasses.replace(TINY, d_ff=0, **changes)).eval()
    with_ff = GPT(dataclasses.replace(TINY, d_ff=8, **changes)).eval()
    missing, unexpected = with_ff.load_state_dict(attention_only.state_dict(), strict=False)
    assert unexpected == [] and all(".ff." in k or ".norm2." in k for k in missing) and missing
    for layer in with_ff.layers:
        torch.nn.init.zeros_(layer.ff.W_2.weight)
        torch.nn.init.zeros_(layer.ff.W_2.bias)
    assert all(layer.ff is None and layer.norm2 is None for layer in attention_only.layers)
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    with torch.no_grad():
        ours, reference = attention_only(tokens), with_ff(tokens)
    if norm_first:
        torch.testing.assert_close(ours, reference)
    else:  # post-LN: the reference normalises once more after its zero feed-forward
        assert not torch.allclose(ours, reference)


def test_attention_only_config_rejects_a_negative_width():
    with pytest.raises(ValueError, match="d_ff"):
        dataclasses.replace(TINY, d_ff=-1)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(1)
    model = GPT(TINY).eval()
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert (a[:, 9:] - b[:, 9:]).abs().amax(dim=-1).min() > 1e-6  # every later position sees the change


def test_manual_and_fused_attention_agree():
    torch.manual_seed(2)
    manual = GPT(dataclasses.replace(TINY, attn_impl="manual")).eval()
    fused = GPT(dataclasses.replace(TINY, attn_impl="fused")).eval()
    fused.load_state_dict(manual.state_dict())
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens), manual(tokens), rtol=1e-5, atol=1e-5)


def test_switches_tie_final_norm_and_scaled_residual_init():
    torch.manual_seed(3)
    untied = GPT(dataclasses.replace(TINY, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert isinstance(GPT(dataclasses.replace(TINY, final_norm=True)).final_norm, torch.nn.LayerNorm)
    deep = dataclasses.replace(TINY, n_layers=8, d_model=64, d_ff=256)
    plain = GPT(deep).layers[0].self_attn.W_o.weight.std().item()
    scaled_model = GPT(dataclasses.replace(deep, scaled_residual_init=True))
    scaled = scaled_model.layers[0].self_attn.W_o.weight.std().item()
    assert plain == pytest.approx(0.02, rel=0.1)
    assert scaled == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert scaled_model.layers[0].self_attn.W_q.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_loss_at_initialisation_is_close_to_ln_v_and_pads_are_ignored():
    torch.manual_seed(4)
    config = dataclasses.replace(TINY, vocab_size=500)
    model = GPT(config).eval()
    tokens = torch.randint(0, 500, (8, 16))
    with torch.no_grad():
        logits = model(tokens)
    loss = lm_loss(logits, tokens)
    assert loss.item() == pytest.approx(math.log(500), abs=0.1)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 500), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    padded = tokens.clone()
    padded[:, 10:] = PAD
    kept = F.cross_entropy(logits[:, :9].reshape(-1, 500), padded[:, 1:10].reshape(-1))
    torch.testing.assert_close(lm_loss(logits, padded, pad_id=PAD), kept)


def test_lm_loss_with_no_target_raises_instead_of_returning_nan():
    logits = torch.zeros(2, 4, 10)
    all_padding = torch.tensor([[START, PAD, PAD, PAD], [START, PAD, PAD, PAD]])  # the first token is no target
    with pytest.raises(ValueError, match="no target.*pad_id=0"):
        lm_loss(logits, all_padding, pad_id=PAD)
    with pytest.raises(ValueError, match="no target"):
        lm_loss(logits[:, :1], all_padding[:, :1])  # T = 1: nothing to predict
    assert torch.isfinite(lm_loss(logits, all_padding))  # without pad_id the padding is a target like any other


def test_training_overfits_one_batch():
    torch.manual_seed(5)
    model = GPT(TINY)
    tokens = torch.randint(0, TINY.vocab_size, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = lm_loss(model(tokens), tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5  # from about ln 64 = 4.2


def test_seeded_generation_is_reproducible_and_crops_the_context():
    torch.manual_seed(6)
    model = GPT(TINY)
    prompt = torch.randint(0, TINY.vocab_size, (2, 5))
    a = model.generate(prompt, 30, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 30, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    c = model.generate(prompt, 30, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 35) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :5], prompt)
    assert model.training  # the mode is restored
    single = model.generate(prompt[0], 3, temperature=0)
    assert single.shape == (8,)
    with torch.no_grad():
        model.eval()
        greedy_next = model(single[None, :5])[0, -1].argmax()
    assert single[5] == greedy_next
    with pytest.raises(ValueError, match="crop_context"):
        model.generate(prompt, 12, crop_context=False)  # 5 + 12 > 16
    assert model.generate(prompt, 11, crop_context=False).shape == (2, 16)


def test_clear_errors_for_bad_inputs():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="context_length=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"vocab_size=64\).*64"):
        model(torch.tensor([[1, 2, 64]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\)"):
        model(torch.zeros(4, dtype=torch.long))
    # nn.Embedding takes int64 and int32 only: other dtypes used to pass the check and fail inside the embedding.
    for dtype in (torch.float32, torch.uint8, torch.int16, torch.bool):
        with pytest.raises(TypeError, match=f"tokens must hold integer token ids of dtype torch.int64 or .*{dtype}"):
            model(torch.zeros(1, 4, dtype=dtype))
        with pytest.raises(TypeError, match="tokens must hold integer token ids"):
            model.attention_weights(torch.zeros(1, 4, dtype=dtype))
    assert model(torch.zeros(1, 4, dtype=torch.int32)).shape == (1, 4, TINY.vocab_size)
    clf = GPTClassifier(model, n_classes=2, extract_id=EXTRACT)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\) or \(B, K, T\)"):
        clf(torch.tensor([START, EXTRACT]))
    with pytest.raises(TypeError, match="tokens must hold integer token ids"):
        clf(torch.tensor([[START, EXTRACT]], dtype=torch.uint8))


@pytest.mark.parametrize("bad, allowed", [
    ({"d_model": 30}, "divisible"), ({"activation": "swish"}, "activation must be one of"),
    ({"attn_impl": "flash"}, "attn_impl must be one of"),
    ({"dropout": 1.0}, r"dropout must be a real number in \[0, 1\)"),
    ({"dropout": "0.1"}, r"dropout must be a real number in \[0, 1\), got '0.1' \(str\)"),
    ({"dropout": True}, "dropout must be a real number"), ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ({"n_layers": 2.0}, r"n_layers must be a positive integer, got 2.0 \(float\)"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps must be a real number > 0"),
    ({"norm_first": 1}, "norm_first must be True or False"),
])
def test_bad_config_names_the_field_and_what_is_allowed(bad, allowed):
    with pytest.raises(ValueError, match=allowed):
        dataclasses.replace(TINY, **bad)


def test_input_transformations_build_the_papers_sequences():
    assert build_classification_input([10, 11, 12], START, EXTRACT) == [START, 10, 11, 12, EXTRACT]
    assert build_classification_input([10, 11, 12, 13], START, EXTRACT, max_length=4) == [START, 10, 11, EXTRACT]
    assert build_pair_inputs([10, 11], [20], START, DELIM, EXTRACT) == [
        [START, 10, 11, DELIM, 20, EXTRACT],
        [START, 20, DELIM, 10, 11, EXTRACT],
    ]
    assert build_pair_inputs([10, 11], [20], START, DELIM, EXTRACT, both_orders=False) == [
        [START, 10, 11, DELIM, 20, EXTRACT]
    ]
    a, _ = build_pair_inputs(list(range(10, 20)), [20, 21], START, DELIM, EXTRACT, max_length=9)
    assert a == [START, 10, 11, 12, 13, DELIM, 20, 21, EXTRACT]  # the longer text is shortened first
    assert pad_batch([[1, 2, 3], [4]], PAD).tolist() == [[1, 2, 3], [4, 0, 0]]


def _classifier():
    torch.manual_seed(9)
    return GPTClassifier(GPT(TINY), n_classes=3, extract_id=EXTRACT).eval()


def test_classifier_reads_the_hidden_state_at_extract_and_ignores_padding():
    clf = _classifier()
    seqs = [build_classification_input([10, 11, 12, 13], START, EXTRACT), build_classification_input([20], START,
                                                                                                     EXTRACT)]
    tokens = pad_batch(seqs, PAD)  # (2, 6)
    with torch.no_grad():
        class_logits, lm_logits = clf(tokens)
        h = clf.gpt.hidden_states(tokens)
        alone = clf(torch.tensor([seqs[1]]))[0]
    torch.testing.assert_close(class_logits, clf.head(h[[0, 1], [5, 2]]))
    torch.testing.assert_close(alone[0], class_logits[1])  # padding after <extract> changes nothing
    assert lm_logits.shape == (2, 6, TINY.vocab_size)
    with pytest.raises(ValueError, match="exactly one <extract>"):
        clf(torch.tensor([[START, 10, 11]]))


def test_pair_classifier_adds_both_orders_so_it_is_symmetric():
    clf = _classifier()
    ab = pad_batch(build_pair_inputs([10, 11, 12], [20, 21], START, DELIM, EXTRACT), PAD)  # (2, T): both orders
    ba = pad_batch(build_pair_inputs([20, 21], [10, 11, 12], START, DELIM, EXTRACT), PAD)
    with torch.no_grad():
        logits_ab, lm_ab = clf(ab[None])  # (1, 2, T)
        logits_ba, _ = clf(ba[None])
        one_order, _ = clf(ab[:1])
        h = clf.gpt.hidden_states(ab)
    torch.testing.assert_close(logits_ab, logits_ba)
    torch.testing.assert_close(logits_ab[0], clf.head(h[0, -1] + h[1, -1]))
    assert not torch.allclose(logits_ab, one_order)
    assert lm_ab.shape == (1, 2, ab.shape[1], TINY.vocab_size)


def test_finetune_loss_is_classification_plus_weighted_lm_loss():
    clf = _classifier()
    tokens = pad_batch([build_classification_input([10, 11], START, EXTRACT)] * 2, PAD)
    labels = torch.tensor([0, 2])
    class_logits, lm_logits = clf(tokens)
    loss = finetune_loss(class_logits, labels, lm_logits, tokens, lm_weight=0.5, pad_id=PAD)
    expected = F.cross_entropy(class_logits, labels) + 0.5 * lm_loss(lm_logits, tokens, PAD)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(finetune_loss(class_logits, labels, lm_logits, tokens, lm_weight=0.0),
                               F.cross_entropy(class_logits, labels))


def test_continuation_log_probs_equal_one_pair_at_a_time_and_check_their_inputs():
    from llmbook.gpt import continuation_log_probs

    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    g = torch.Generator().manual_seed(1)
    prefixes = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (1, 3, 5)]
    continuations = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (4, 1, 2)]
    scores = continuation_log_probs(model, prefixes, continuations, batch_size=2)
    for score, p, c in zip(scores, prefixes, continuations, strict=True):
        with torch.no_grad():
            log_probs = model(torch.tensor([p + c]))[0].log_softmax(dim=-1)  # (T, V), one pair, no padding
        expected = sum(log_probs[len(p) - 1 + i, token] for i, token in enumerate(c))
        torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one token"):
        continuation_log_probs(model, [[]], [[1]])
    with pytest.raises(ValueError, match="as many"):
        continuation_log_probs(model, [[1]], [[1], [2]])


# GPT-2 (Chapter 4): presets and their sizes, the residual init, Hugging Face GPT2LMHeadModel, the KV cache.
GPT2_SIZES = {  # preset: (exact count, the paper's Table 2, OpenAI's release name)
    "gpt2": (124_439_808, "117M", "124M"),
    "gpt2-medium": (354_823_168, "345M", "355M"),
    "gpt2-large": (774_030_080, "762M", "774M"),
    "gpt2-xl": (1_557_611_200, "1542M", "1558M"),
}


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_gpt2_parameter_counts_closed_form_meta_model_hugging_face_paper_and_release(name):
    config = PRESETS[name]
    exact, paper, release = GPT2_SIZES[name]
    assert config.d_ff == 4 * config.d_model and config.d_model // config.n_heads == 64
    assert gpt_parameter_count(config) == exact
    with torch.device("meta"):
        ours = GPT(config)
        hf = GPT2LMHeadModel(GPT2Config(n_layer=config.n_layers, n_embd=config.d_model, n_head=config.n_heads))
    assert count_parameters(ours) == exact
    assert count_parameters(hf) == exact
    millions = round(exact / 1e6)
    assert f"{millions}M" == release  # OpenAI's corrected names are the exact counts rounded to the million
    assert f"{millions}M" != paper  # the paper's counts were wrong, all four of them
    # The paper's numbers are, to the million, the same shapes with GPT-1's 40,478-token vocabulary.
    assert f"{round(gpt_parameter_count(dataclasses.replace(config, vocab_size=40478)) / 1e6)}M" == paper


def test_gpt2_presets_are_pre_ln_with_a_final_norm_tied_gelu_tanh():
    for name in GPT2_SIZES:
        c = PRESETS[name]
        assert (c.vocab_size, c.context_length, c.activation, c.layer_norm_eps) == (50257, 1024, "gelu_tanh", 1e-5)
        assert c.norm_first and c.final_norm and c.tie_embeddings and c.scaled_residual_init
    assert [PRESETS[n].n_layers for n in GPT2_SIZES] == [12, 24, 36, 48]
    assert [PRESETS[n].d_model for n in GPT2_SIZES] == [768, 1024, 1280, 1600]


def test_gpt2_residual_init_is_0_02_over_sqrt_2_n_layers_on_the_output_projections_as_hugging_face():
    # GPT-2's 12 layers at a narrower width: W_o and W_2 (HF's attn.c_proj, mlp.c_proj) at 0.02 / sqrt(24).
    config = dataclasses.replace(PRESETS["gpt2"], vocab_size=64, context_length=16, d_model=128, n_heads=4,
                                 d_ff=512)
    torch.manual_seed(10)
    ours = GPT(config)
    hf = GPT2LMHeadModel(_gpt2_hf_config(n_layer=12, n_embd=128, n_head=4))
    expected = 0.02 / math.sqrt(2 * 12)
    std = lambda ws: torch.cat([w.flatten() for w in ws]).std().item()  # noqa: E731
    assert std(layer.self_attn.W_o.weight for layer in ours.layers) == pytest.approx(expected, rel=0.02)
    assert std(layer.ff.W_2.weight for layer in ours.layers) == pytest.approx(expected, rel=0.02)
    assert std(h.attn.c_proj.weight for h in hf.transformer.h) == pytest.approx(expected, rel=0.02)
    assert std(h.mlp.c_proj.weight for h in hf.transformer.h) == pytest.approx(expected, rel=0.02)
    for unscaled in (std(layer.self_attn.W_q.weight for layer in ours.layers),
                     std(layer.ff.W_1.weight for layer in ours.layers), ours.tok_emb.weight.std().item()):
        assert unscaled == pytest.approx(0.02, rel=0.02)


def _gpt2_hf_config(**changes):
    """A tiny random GPT2Config, no dropout, eager attention (so that it can return its weights)."""
    base = dict(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=64, activation_function="gelu_new",
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    config = GPT2Config(**{**base, **changes})
    config._attn_implementation = "eager"
    return config


def _hf_gpt2_pair(attn_impl="manual"):
    """A random tiny HF GPT2LMHeadModel, every parameter perturbed (biases, LayerNorms too), and ours loaded from it."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(_gpt2_hf_config()).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config = dataclasses.replace(PRESETS["gpt2"], vocab_size=64, context_length=16, d_model=32, n_heads=4,
                                 n_layers=2, d_ff=128, dropout=0.0, attn_impl=attn_impl)
    ours = GPT(config).eval()
    assert load_hf_gpt2_state_dict(ours, hf.state_dict()) == []
    return hf, ours


@pytest.mark.parametrize("attn_impl", ["manual", "fused"])
def test_logits_equal_hugging_face_gpt2(attn_impl):
    hf, ours = _hf_gpt2_pair(attn_impl)
    tokens = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(ours(tokens), expected, rtol=1e-5, atol=1e-5)  # measured: max |diff| 9e-7
        torch.testing.assert_close(ours(tokens[:, :7]), expected[:, :7], rtol=1e-5, atol=1e-5)


def test_gpt2_hidden_states_and_attention_weights_equal_hugging_face():
    hf, ours = _hf_gpt2_pair("manual")
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        out = hf.transformer(tokens, output_attentions=True)
        h = ours.hidden_states(tokens)
        weights = ours.attention_weights(tokens)
    torch.testing.assert_close(h, out.last_hidden_state, rtol=1e-5, atol=1e-5)  # after ln_f in both
    assert len(weights) == len(out.attentions) == 2
    for w, hf_w in zip(weights, out.attentions, strict=True):
        assert w.shape == (2, 4, 12, 12)
        torch.testing.assert_close(w, hf_w, rtol=1e-5, atol=1e-6)


def test_gpt2_key_map_reports_unused_buffers_and_rejects_a_mismatch():
    hf, ours = _hf_gpt2_pair()
    c_attn = hf.transformer.h[1].attn.c_attn  # Conv1D (D, 3D)
    torch.testing.assert_close(ours.layers[1].self_attn.W_k.weight, c_attn.weight[:, 32:64].t())
    torch.testing.assert_close(ours.final_norm.weight, hf.transformer.ln_f.weight)
    assert ours.lm_head.weight is ours.tok_emb.weight
    # Checkpoints saved by older transformers versions carry two causal-mask buffers per block.
    old = {**hf.state_dict(), **{f"transformer.h.{n}.attn.{b}": torch.ones(1) for n in (0, 1)
                                 for b in ("bias", "masked_bias")}}
    assert load_hf_gpt2_state_dict(ours, old) == ["h.0.attn.bias", "h.0.attn.masked_bias", "h.1.attn.bias",
                                                  "h.1.attn.masked_bias"]
    bare = GPT2Model(hf.config)
    bare.load_state_dict(hf.transformer.state_dict())
    assert load_hf_gpt2_state_dict(GPT(ours.config), bare.state_dict()) == []
    with pytest.raises(ValueError, match="norm_first=True and final_norm=True"):
        load_hf_gpt2_state_dict(GPT(dataclasses.replace(ours.config, norm_first=False)), hf.state_dict())
    with pytest.raises(ValueError, match="does not know"):
        load_hf_gpt2_state_dict(ours, {**hf.state_dict(), "transformer.h.0.attn.extra": torch.ones(1)})
    with pytest.raises(ValueError, match="lacks weights"):
        load_hf_gpt2_state_dict(GPT(dataclasses.replace(ours.config, n_layers=3)), hf.state_dict())
    with pytest.raises(ValueError, match="does not know"):  # GPT-1's names are not GPT-2's
        load_hf_openai_gpt_state_dict(GPT(dataclasses.replace(ours.config, norm_first=False, final_norm=False)),
                                      hf.state_dict())


CACHE_CONFIGS = {"gpt1 post-LN": TINY, "gpt2 pre-LN": dataclasses.replace(
    PRESETS["gpt2"], vocab_size=64, context_length=16, d_model=32, n_heads=4, n_layers=2, d_ff=128, dropout=0.0)}


@pytest.mark.parametrize("attn_impl", ["manual", "fused"])
@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_cached_decoding_gives_the_logits_of_a_full_pass_at_every_position(name, attn_impl):
    torch.manual_seed(11)
    model = GPT(dataclasses.replace(CACHE_CONFIGS[name], attn_impl=attn_impl)).eval()
    tokens = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        for p in model.parameters():  # far from the init, whose nearly uniform attention would hide a wrong mask
            p.add_(0.3 * torch.randn_like(p))
        full = model(tokens)  # (B, T, V)
        cache = model.new_cache()
        # A prompt of 5, then 3 tokens at once (queries after the cache, T > 1), then one at a time to the end.
        pieces = [model(tokens[:, :5], cache), model(tokens[:, 5:8], cache)]
        pieces += [model(tokens[:, t:t + 1], cache) for t in range(8, 16)]
    assert [c.length for c in cache] == [16, 16]
    assert cache[0].keys is not None and cache[0].keys.shape == (3, 4, 16, 8)  # (B, H, T, Dh)
    # Measured: at most 8e-6 on logits up to 8 (float32); the bound leaves other CPU kernels some room.
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=3e-5)


def test_cache_that_would_exceed_the_context_is_a_clear_error():
    model = GPT(TINY).eval()
    cache = model.new_cache()
    model(torch.zeros(1, 14, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="holds 14 positions and tokens adds 3: 17 positions are more than "
                                         "context_length=16"):
        model(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="one KVCache per layer"):
        model(torch.zeros(1, 1, dtype=torch.long), cache[:1])


@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_generation_with_and_without_the_cache_gives_the_same_tokens(name):
    torch.manual_seed(12)
    model = GPT(dataclasses.replace(CACHE_CONFIGS[name], dropout=0.1))  # generate switches dropout off
    prompt = torch.randint(0, 64, (4, 3))

    def draw(new, use_cache, **kwargs):
        return model.generate(prompt, new, generator=torch.Generator().manual_seed(13), use_cache=use_cache, **kwargs)

    for kwargs in ({"temperature": 0}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 10, "top_p": 0.9},
                   {"temperature": 1.0, "eos_id": 5}):
        for new in (13, 30):  # within the context, and past it (cropped: the cache is left for full passes)
            assert torch.equal(draw(new, True, **kwargs), draw(new, False, **kwargs)), (kwargs, new)
    assert model.training


@pytest.mark.parametrize("tie", [True, False])
def test_non_embedding_count_is_the_model_without_its_vocabulary_and_position_matrices(tie):
    config = GPTConfig(vocab_size=80, context_length=128, d_model=48, n_heads=3, n_layers=3, d_ff=192,
                       final_norm=True, tie_embeddings=tie)
    model = GPT(config)
    vocabulary = {id(model.tok_emb.weight), id(model.lm_head.weight), id(model.pos_emb.pos_emb.weight)}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in vocabulary)
    assert non_embedding_parameter_count(config) == rest
    # Kaplan's approximation 12 n_layers d_model^2 leaves out biases and LayerNorms
    assert abs(rest / (12 * 3 * 48**2) - 1) < 0.04


def test_gpt2_config_is_the_presets_block_at_any_size():
    assert gpt2_config(12, 768, 12) == PRESETS["gpt2"]
    small = gpt2_config(2, 32, 2, vocab_size=80, context_length=64, dropout=0.0)
    assert (small.norm_first, small.final_norm, small.scaled_residual_init, small.d_ff) == (True, True, True, 128)
