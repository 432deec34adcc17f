"""BERT: equivalence with Hugging Face through the key map, padding invariance, parameter counts, input checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers

from llmbook.bert import (
    PRESETS,
    Bert,
    BertClassifier,
    BertConfig,
    BertForMaskedLM,
    bert_config_from_hf,
    bert_parameter_count,
    load_hf_bert_state_dict,
)
from llmbook.config import count_parameters

ATOL, RTOL = 1e-5, 1e-4


def hf_config(**overrides) -> transformers.BertConfig:
    kwargs = dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=24, type_vocab_size=3, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (LayerNorms and biases included) non-trivial values, keeping ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def padded_batch(vocab_size: int, type_vocab_size: int, lengths=(12, 7, 3), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    tokens = torch.randint(1, vocab_size, (len(lengths), T), generator=g)  # pad_id 0 only in the padding
    segments = torch.randint(0, type_vocab_size, (len(lengths), T), generator=g)
    attention_mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    tokens = tokens * attention_mask
    segments = segments * attention_mask
    return tokens, segments, attention_mask


@pytest.mark.parametrize("attn_impl", ["manual", "fused"])
def test_masked_lm_matches_hugging_face(attn_impl):
    torch.manual_seed(0)
    hf = randomize(transformers.BertForMaskedLM(hf_config()))
    config = dataclasses.replace(bert_config_from_hf(hf.config.to_dict()), attn_impl=attn_impl)
    ours = BertForMaskedLM(config).eval()
    assert load_hf_bert_state_dict(ours, hf.state_dict()) == []
    tokens, segments, attention_mask = padded_batch(config.vocab_size, config.type_vocab_size)
    with torch.no_grad():
        expected = hf(input_ids=tokens, token_type_ids=segments, attention_mask=attention_mask).logits
        logits = ours(tokens, segments, attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=ATOL, rtol=RTOL)


def test_attention_weights_match_hugging_face():
    torch.manual_seed(0)
    hf = randomize(transformers.BertForMaskedLM(hf_config()))
    ours = BertForMaskedLM(bert_config_from_hf(hf.config.to_dict())).eval()
    load_hf_bert_state_dict(ours, hf.state_dict())
    tokens, segments, attention_mask = padded_batch(97, 3)
    with torch.no_grad():
        expected = hf(tokens, token_type_ids=segments, attention_mask=attention_mask, output_attentions=True).attentions
        weights = ours.attention_weights(tokens, segments, attention_mask)
        assert torch.equal(ours.bert.attention_weights(tokens, segments, attention_mask)[1], weights[1])
    assert len(weights) == len(expected) == 2
    real = attention_mask.bool()  # compare the rows of real query tokens
    for w, e in zip(weights, expected, strict=True):
        assert w.shape == (3, 4, 12, 12)
        torch.testing.assert_close(w.transpose(1, 2)[real], e.transpose(1, 2)[real], atol=ATOL, rtol=RTOL)
        assert torch.all(w[~real[:, None, None, :].expand_as(w)] == 0)  # no weight on padding keys


def test_plain_bert_model_state_dict_loads_and_leaves_the_pooler_unused():
    torch.manual_seed(0)
    hf = randomize(transformers.BertModel(hf_config()))
    ours = Bert(bert_config_from_hf(hf.config.to_dict())).eval()
    unused = load_hf_bert_state_dict(ours, hf.state_dict())
    assert unused == ["pooler.dense.bias", "pooler.dense.weight"]
    tokens, segments, attention_mask = padded_batch(97, 3)
    with torch.no_grad():
        expected = hf(tokens, token_type_ids=segments, attention_mask=attention_mask).last_hidden_state
        hidden = ours(tokens, segments, attention_mask)
        assert torch.equal(ours.hidden_states(tokens, segments, attention_mask), hidden)  # the body's forward
    real = attention_mask.bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=ATOL, rtol=RTOL)


def test_classifier_matches_hugging_face_sequence_classification():
    torch.manual_seed(0)
    hf = randomize(transformers.BertForSequenceClassification(hf_config(num_labels=5)))
    ours = BertClassifier(bert_config_from_hf(hf.config.to_dict()), n_classes=5).eval()
    assert load_hf_bert_state_dict(ours, hf.state_dict()) == []
    tokens, segments, attention_mask = padded_batch(97, 3)
    with torch.no_grad():
        expected = hf(tokens, token_type_ids=segments, attention_mask=attention_mask).logits
        logits = ours(tokens, segments, attention_mask)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)


def test_key_map_rejects_missing_unknown_and_misshapen_weights():
    hf_state = transformers.BertForMaskedLM(hf_config()).state_dict()
    config = bert_config_from_hf(hf_config().to_dict())
    with pytest.raises(ValueError, match="lacks weights"):
        load_hf_bert_state_dict(BertClassifier(config, n_classes=2), hf_state)  # no pooler, no classifier
    with pytest.raises(ValueError, match="does not know"):
        extra = {**hf_state, "bert.encoder.layer.0.extra.weight": torch.ones(1)}
        load_hf_bert_state_dict(BertForMaskedLM(config), extra)
    with pytest.raises(ValueError, match="shape"):
        load_hf_bert_state_dict(BertForMaskedLM(dataclasses.replace(config, d_ff=50)), hf_state)
    with pytest.raises(ValueError, match="different depth"):  # a layer of the checkpoint has no place in ours
        load_hf_bert_state_dict(BertForMaskedLM(dataclasses.replace(config, n_layers=1)), hf_state)
    untied = dict(hf_state, **{"cls.predictions.decoder.weight": torch.zeros(97, 32)})
    with pytest.raises(ValueError, match="tied"):
        load_hf_bert_state_dict(BertForMaskedLM(config), untied)
    with pytest.raises(TypeError, match="model"):
        load_hf_bert_state_dict(torch.nn.Linear(2, 2), hf_state)


def test_mlm_decoder_is_tied_to_token_embeddings():
    torch.manual_seed(6)
    model = BertForMaskedLM(PRESETS["tiny"]).eval()
    tokens = torch.tensor([[1, 5, 7, 9]])
    before = model(tokens)
    with torch.no_grad():
        model.bert.tok_emb.weight[42] += 1.0  # token 42 is not in the input: only its output logit can change
    after = model(tokens)
    changed = (after - before).abs().amax(dim=(0, 1)) > 0
    assert changed.nonzero().flatten().tolist() == [42]


@pytest.mark.parametrize("attn_impl", ["manual", "fused"])
def test_padding_invariance(attn_impl):
    torch.manual_seed(3)  # the initial weights; unseeded, about 1 run in 3 exceeded a 1e-6 tolerance
    config = dataclasses.replace(PRESETS["tiny"], attn_impl=attn_impl)
    model = randomize(Bert(config), seed=3)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(1, config.vocab_size, (1, 6), generator=g)
    segments = torch.tensor([[0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        alone = model(tokens, segments)
        padded = torch.cat([tokens, torch.zeros(1, 5, dtype=torch.long)], dim=1)  # five [PAD] tokens
        mask = (padded != 0).long()
        with_mask = model(padded, torch.cat([segments, torch.zeros(1, 5, dtype=torch.long)], 1), mask)
        from_pad_id = model(padded, torch.cat([segments, torch.zeros(1, 5, dtype=torch.long)], 1))
        unmasked = model(padded, attention_mask=torch.ones_like(padded))
    # Masked keys get weight exactly 0, but the padded input has other shapes (T = 11 against 6), so matrix products
    # and softmax sum in another order: float32 rounding (eps = 1.2e-7) on outputs of size up to about 4, through two
    # layers, left differences up to 3e-6 (7 ulps) over 100 initialisations. ATOL = 1e-5 and RTOL = 1e-4 leave room
    # for that and are far below what a leak of padding does (outputs move by more than 2, checked below).
    torch.testing.assert_close(with_mask[:, :6], alone, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(from_pad_id[:, :6], alone, atol=ATOL, rtol=RTOL)
    assert not torch.allclose(unmasked[:, :6], alone, atol=1e-3)  # the mask is what makes it invariant


def test_bidirectional_every_position_sees_the_future():
    torch.manual_seed(5)
    model = randomize(Bert(PRESETS["tiny"]), seed=5)
    tokens = torch.tensor([[3, 4, 5, 6, 7]])
    changed = tokens.clone()
    changed[0, -1] = 8
    with torch.no_grad():
        a = model(tokens)
        b = model(changed)
    assert (a - b).abs().amax(dim=-1).min() > 1e-4  # unlike GPT, position 0 depends on the last token


@pytest.mark.parametrize("name", ["bert-base", "bert-large", "minilm-l6", "small", "tiny"])
def test_parameter_counts_closed_form_equal_numel_on_meta(name):
    config = PRESETS[name]
    with torch.device("meta"):
        models = {
            "encoder": (Bert(config), bert_parameter_count(config)),
            "mlm": (BertForMaskedLM(config), bert_parameter_count(config, mlm_head=True)),
            "classifier": (BertClassifier(config, 3), bert_parameter_count(config, pooler=True, n_classes=3)),
        }
    for model, expected in models.values():
        assert count_parameters(model) == expected


def test_parameter_counts_against_hugging_face_and_the_paper():
    config = bert_config_from_hf(hf_config().to_dict())
    assert count_parameters(transformers.BertModel(hf_config())) == bert_parameter_count(config, pooler=True)
    assert count_parameters(transformers.BertForMaskedLM(hf_config())) == bert_parameter_count(config, mlm_head=True)
    assert count_parameters(transformers.BertForPreTraining(hf_config())) == bert_parameter_count(
        config, pooler=True, mlm_head=True, n_classes=2
    )  # encoder + pooler + MLM head + NSP head
    # Encoder + pooler, the usual reading of the paper's "110M" and "340M" (Devlin et al., 2018).
    base = bert_parameter_count(PRESETS["bert-base"], pooler=True)
    large = bert_parameter_count(PRESETS["bert-large"], pooler=True)
    assert base == 109_482_240 and abs(base / 110e6 - 1) < 0.01
    assert large == 335_141_888 and abs(large / 340e6 - 1) < 0.02
    with pytest.raises(ValueError, match="pooler"):
        bert_parameter_count(config, n_classes=2)


def test_input_errors_name_the_problem():
    model = Bert(PRESETS["tiny"])  # vocab 100, 16 positions, 2 segments
    ok = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[1, 100, 3]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[1, -1, 3]]))
    with pytest.raises(ValueError, match="context_length"):
        model(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="type_vocab_size"):
        model(ok, segments=torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="segments"):
        model(ok, segments=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ok, attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\), got \(3,\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="n_classes"):
        BertClassifier(PRESETS["tiny"], n_classes=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int16, torch.bool])
def test_ids_of_a_dtype_nn_embedding_refuses_are_rejected_by_name(dtype):
    model = Bert(PRESETS["tiny"])
    ok = torch.tensor([[1, 2, 3]])
    allowed = r"tokens must hold integer token ids of dtype torch.int64 or torch.int32 \(what nn.Embedding takes\)"
    with pytest.raises(TypeError, match=f"{allowed}, got {dtype}"):
        model(ok.to(dtype))
    with pytest.raises(TypeError, match="segments must hold integer token ids"):
        model(ok, segments=torch.zeros(1, 3, dtype=dtype))
    with pytest.raises(TypeError, match="tokens must be a torch.Tensor"):
        model([[1, 2, 3]])
    assert model(ok.int()).shape == (1, 3, 32)  # int32 is accepted, as by nn.Embedding


@pytest.mark.parametrize("attn_impl", ["manual", "fused"])
def test_a_row_of_padding_only_is_an_error_not_nan(attn_impl):
    # With nothing to attend to, softmax over no key is 0 / 0: NaN with manual attention, something finite with the
    # fused kernel. Both implementations reject the row instead, whether padding comes from pad_id or attention_mask.
    torch.manual_seed(7)
    model = BertForMaskedLM(dataclasses.replace(PRESETS["tiny"], attn_impl=attn_impl)).eval()
    tokens = torch.tensor([[5, 6, 7], [0, 0, 0]])  # pad_id 0: the second row is all padding
    with pytest.raises(ValueError, match=r"every tokens row needs a token other than pad_id=0; rows \[1\]"):
        model(tokens)
    with pytest.raises(ValueError, match=r"every attention_mask row needs a 1.*rows \[0\]"):
        model(torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match="nothing to attend to"):
        model.attention_weights(tokens)
    assert torch.isfinite(model(tokens[:1])).all()


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("d_model", 30, "divisible by n_heads"), ("n_heads", 0, "a positive integer"),
        ("vocab_size", 2.5, "a positive integer"), ("n_layers", True, "a positive integer"),
        ("dropout", 1.0, r"a real number in \[0, 1\)"), ("dropout", "0.1", r"a real number in \[0, 1\)"),
        ("activation", "swish", "one of"), ("attn_impl", "flash", r"one of \('manual', 'fused'\)"),
        ("pad_id", 100, r"an integer in \[0, vocab_size=100\)"), ("pad_id", 0.5, r"an integer in \[0, vocab_size="),
        ("layer_norm_eps", 0.0, "a real number > 0"), ("layer_norm_eps", "1e-12", "a real number > 0"),
        ("type_vocab_size", 0, "a positive integer"), ("norm_first", 1, "True or False"),
    ],
)
def test_bad_config_names_the_field_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=f"{field}.*{allowed}"):
        dataclasses.replace(PRESETS["tiny"], **{field: value})


def test_config_is_frozen_and_presets_match_the_papers():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny"].d_model = 64
    base, large = PRESETS["bert-base"], PRESETS["bert-large"]
    assert (base.n_layers, base.d_model, base.n_heads, base.d_ff) == (12, 768, 12, 3072)
    assert (large.n_layers, large.d_model, large.n_heads, large.d_ff) == (24, 1024, 16, 4096)
    assert (base.vocab_size, base.context_length, base.type_vocab_size) == (30522, 512, 2)
    assert BertConfig() == base


def test_pre_ln_switch_is_the_layers_pre_ln_plus_a_final_norm():
    config = dataclasses.replace(PRESETS["tiny"], norm_first=True)
    with torch.device("meta"):
        model = BertForMaskedLM(config)
    assert count_parameters(model) == bert_parameter_count(config, mlm_head=True)
    assert bert_parameter_count(config) == bert_parameter_count(PRESETS["tiny"]) + 2 * config.d_model
    torch.manual_seed(0)
    bert = Bert(config).eval()
    tokens = torch.randint(1, config.vocab_size, (2, 7))
    x = bert.emb_norm(bert.tok_emb(tokens) + bert.seg_emb(torch.zeros_like(tokens)) + bert.pos_emb(torch.arange(7)))
    for layer in bert.layers:  # pre-LN: x + attn(norm1(x)), then x + ff(norm2(x))
        h = layer.norm1(x)
        x = x + layer.self_attn(h)[0]
        x = x + layer.ff(layer.norm2(x))
    torch.testing.assert_close(bert(tokens), bert.final_norm(x), atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="norm_first"):
        load_hf_bert_state_dict(BertForMaskedLM(config), transformers.BertForMaskedLM(hf_config()).state_dict())


def test_mean_pooling_classifier_averages_the_real_tokens_and_ignores_padding():
    torch.manual_seed(5)
    config = PRESETS["tiny"]
    model = randomize(BertClassifier(config, 3, pooling="mean"), seed=5)
    assert model.pooler is None and not any("pooler" in k for k in model.state_dict())
    tokens = torch.randint(1, config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(6))
    padded = torch.cat([tokens, torch.zeros(1, 4, dtype=torch.long)], dim=1)  # four [PAD] tokens
    with torch.no_grad():
        hidden = model.hidden_states(tokens)  # (1, 6, D)
        expected = model.classifier(hidden.mean(dim=1))
        torch.testing.assert_close(model(tokens), expected, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(model(padded), expected, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="pooling must be one of"):
        BertClassifier(config, 3, pooling="max")
