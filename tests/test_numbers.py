import cn2an
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.data.numbers import (
    CHINESE_VOCAB,
    ENGLISH_VOCAB,
    NumberTranslation,
    chinese_tokens,
    decode_tokens,
    english_reading,
    english_tokens,
    exact_match,
    split_numbers,
)
from llmbook.units import chinese_numeral, use_liang
from oracles import cn2an_drops_zero

SPLITS = split_numbers(300, 50, 50, max_digits=12, seed=0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**15 - 1))
def test_vocabularies_are_closed_and_round_trip(n):
    for tokens, vocab in ((english_tokens(n), ENGLISH_VOCAB), (chinese_tokens(n), CHINESE_VOCAB)):
        ids = vocab.encode(tokens)  # raises if a token were missing: no UNK needed
        assert vocab.decode(ids + [vocab.eos_id, 5]) == tokens
    assert ENGLISH_VOCAB.join(english_tokens(n)) == english_reading(n)
    assert CHINESE_VOCAB.join(chinese_tokens(n)) == chinese_numeral(n)


def test_english_reading_follows_num2words_without_commas():
    assert english_reading(1_021) == "one thousand and twenty-one"
    assert english_tokens(21) == ["twenty", "-", "one"]
    assert english_reading(20_000_000) == "twenty million"
    assert english_reading(123_456_789) == ("one hundred and twenty-three million four hundred and fifty-six "
                                            "thousand seven hundred and eighty-nine")


def test_chinese_side_agrees_with_cn2an_and_with_units():
    numbers = SPLITS.train + SPLITS.val + SPLITS.test
    data = NumberTranslation(numbers)
    checked = 0
    for n, text in zip(numbers, data.target_texts, strict=True):
        assert text == chinese_numeral(n)
        if not cn2an_drops_zero(n):
            assert text == use_liang(cn2an.an2cn(n))
            checked += 1
    assert checked > 0.95 * len(numbers)


def test_zero_groups_are_read_with_ling():
    # where cn2an drops the 零 our reading keeps it, by the schoolbook rule
    assert cn2an_drops_zero(500_003_530) and chinese_numeral(500_003_530) == "五亿零三千五百三十"
    assert chinese_numeral(100_001_000) == "一亿零一千"
    assert not cn2an_drops_zero(500_000_530) and chinese_numeral(500_000_530) == "五亿零五百三十"


@pytest.mark.parametrize("n, chinese", [
    (20_000_000, "两千万"), (200_000_000, "两亿"), (2_000, "两千"), (20, "二十"), (120_000, "十二万"), (200, "二百"),
])
def test_liang_is_used_where_everyday_chinese_says_it(n, chinese):
    assert "".join(NumberTranslation([n]).target_texts) == chinese


def test_splits_are_disjoint_and_deterministic():
    again = split_numbers(300, 50, 50, max_digits=12, seed=0)
    assert again == SPLITS
    train, val, test = map(set, (SPLITS.train, SPLITS.val, SPLITS.test))
    assert (len(train), len(val), len(test)) == (300, 50, 50)  # distinct within each split
    assert not (train & val or train & test or val & test)
    assert split_numbers(300, 50, 50, max_digits=12, seed=1) != SPLITS
    assert split_numbers(200, 50, 50, max_digits=12, seed=0).test == SPLITS.test  # test set is fixed first
    lengths = {len(str(n)) for n in SPLITS.train}
    assert lengths == set(range(1, 13))  # every digit count appears
    assert sum(str(n).endswith("000") for n in SPLITS.train) > 60  # round counts are common


def test_max_digit_filter_for_length_generalization():
    splits = split_numbers(200, 20, 50, max_digits=9, train_max_digits=5, seed=0)
    assert max(len(str(n)) for n in splits.train + splits.val) <= 5
    assert {len(str(n)) for n in splits.test} <= set(range(6, 10))
    with pytest.raises(ValueError, match="train_max_digits"):
        split_numbers(10, 1, 1, max_digits=9, train_max_digits=9)
    with pytest.raises(ValueError, match="max_digits"):
        split_numbers(10, 1, 1, max_digits=16)
    with pytest.raises(ValueError, match="distinct numbers"):
        split_numbers(10, 0, 0, max_digits=1, always_train_digits=0)


def test_the_numbers_below_100_are_all_in_training_and_only_there():
    held_out = SPLITS.val + SPLITS.test
    round_numbers = {d * 10**z for z in range(12) for d in range(1, 10)}  # one non-zero digit: 5,000, 80,000
    assert set(range(1, 100)) | round_numbers <= set(SPLITS.train)
    assert min(held_out) >= 100 and not round_numbers & set(held_out)
    assert {len(str(n)) for n in SPLITS.test} == set(range(3, 13))
    none_forced = split_numbers(300, 50, 50, max_digits=12, always_train_digits=0, seed=0)
    assert min(none_forced.test) < 100  # the old split: short numbers can land in test
    with pytest.raises(ValueError, match="n_train must be >= 99"):
        split_numbers(50, 10, 10, always_train_round=False)
    with pytest.raises(ValueError, match=r"n_train must be >= 162: .* one non-zero digit"):
        split_numbers(150, 10, 10)  # 99 + 9 round numbers for each of 3 to 9 digits
    with pytest.raises(ValueError, match="always_train_digits"):
        split_numbers(300, 10, 10, max_digits=9, train_max_digits=2)


@pytest.mark.parametrize("direction", ["en->zh", "zh->en"])
def test_batches_have_bos_eos_and_padding_in_place(direction):
    data = NumberTranslation(SPLITS.val, direction)
    src, tgt_in, tgt_out = data.collate(range(8))
    source_lengths = [len(data[i][0]) for i in range(8)]
    target_lengths = [len(data[i][1]) for i in range(8)]
    assert src.shape == (8, max(source_lengths)) and src.dtype == torch.long
    assert tgt_in.shape == tgt_out.shape == (8, max(target_lengths) + 1)
    for i in range(8):
        S, T = source_lengths[i], target_lengths[i]
        source, target = data[i]
        assert src[i, :S].tolist() == source and (src[i, S:] == 0).all()
        assert tgt_in[i, : T + 1].tolist() == [data.tgt_vocab.bos_id] + target
        assert tgt_out[i, : T + 1].tolist() == target + [data.tgt_vocab.eos_id]
        assert (tgt_in[i, T + 1 :] == 0).all() and (tgt_out[i, T + 1 :] == 0).all()
    assert decode_tokens(tgt_out, data.tgt_vocab) == data.target_texts[:8]
    assert decode_tokens(src, data.src_vocab) == data.source_texts[:8]
    source_vocab = ENGLISH_VOCAB if direction == "en->zh" else CHINESE_VOCAB
    assert data.src_vocab is source_vocab


def test_batch_fn_is_a_deterministic_function_of_the_step():
    data = NumberTranslation(SPLITS.val)  # 50 numbers, 5 batches of 10 per epoch
    get_batch = data.batch_fn(10, seed=3)
    epoch = [get_batch(step) for step in range(5)]
    seen = sorted(n for batch in epoch for n in decode_tokens(batch[2], data.tgt_vocab))
    assert seen == sorted(data.target_texts)  # each number once per epoch
    torch.testing.assert_close(data.batch_fn(10, seed=3)(2), epoch[2])  # same step, same batch
    assert not torch.equal(get_batch(5)[0], epoch[0][0])  # the next epoch is shuffled anew
    in_order = data.batch_fn(10, shuffle=False)
    assert decode_tokens(in_order(6)[2], data.tgt_vocab) == data.target_texts[10:20]
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_fn(51)


def test_exact_match():
    assert exact_match(["两亿", "十二", "三"], ["两亿", "十一", "三"]) == pytest.approx(2 / 3)
    assert exact_match([["twenty"]], [["twenty"]]) == 1.0
    with pytest.raises(ValueError, match="equal length"):
        exact_match(["a"], ["a", "b"])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="direction"):
        NumberTranslation([1], "en->fr")
    with pytest.raises(ValueError, match="not in the en vocabulary"):
        ENGLISH_VOCAB.encode(["zero"])
