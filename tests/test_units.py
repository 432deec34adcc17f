"""Readings of counts in English short scale and in Chinese units."""

import random

import cn2an
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbook.units import MAX_COUNT, chinese_numeral, chinese_short, english_short, english_words, use_liang
from oracles import cn2an_drops_zero


@pytest.mark.parametrize("n, expected", [
    (1_000_000, "一百万"), (20_000_000, "两千万"), (200_000_000, "两亿"), (1_000_000_000, "十亿"),
    (1, "一"), (10, "十"), (15, "十五"), (110, "一百一十"), (100_000, "十万"), (150_000, "十五万"),
    # 零: a run of zeros inside the number is read once; zeros at the end of a group are silent.
    (101, "一百零一"), (1_001, "一千零一"), (10_005, "一万零五"), (100_000_500, "一亿零五百"),
    (100_000_005, "一亿零五"), (10_002_000, "一千万两千"), (100_010, "十万零一十"),
    # 两 before 千, 万, 亿; 二 after 十 or 零 and before 十 or 百.
    (2, "二"), (20, "二十"), (200, "二百"), (2_000, "两千"), (20_000, "两万"), (120_000, "十二万"),
    (22_000, "两万两千"), (1_002, "一千零二"), (200_020_000, "两亿零二万"),
    # Beyond 亿: 10^12 is 万亿 and 10^15 is 一千万亿.
    (10**12, "一万亿"), (10**12 + 10**8, "一万零一亿"), (10**12 + 5, "一万亿零五"), (MAX_COUNT, "一千万亿"),
])
def test_chinese_numeral(n, expected):
    assert chinese_numeral(n) == expected


@given(st.integers(min_value=1, max_value=MAX_COUNT))
def test_chinese_numeral_agrees_with_cn2an(n):
    # cn2an, a maintained converter, reads with the same rules and 二 everywhere: an independent oracle, except
    # where it is known to drop a 零 (tests/oracles.py).
    if not cn2an_drops_zero(n):
        assert chinese_numeral(n, liang=False) == cn2an.an2cn(n)


def test_where_cn2an_drops_a_zero_we_keep_it():
    assert cn2an_drops_zero(500_003_530) and cn2an.an2cn(500_003_530) == "五亿三千五百三十"
    assert chinese_numeral(500_003_530) == "五亿零三千五百三十"


def test_chinese_numeral_agrees_with_cn2an_at_every_magnitude():
    rng = random.Random(1)
    for exponent in range(16):
        for n in {10**exponent, rng.randint(10**exponent, 10 ** (exponent + 1) - 1)}:
            if n <= MAX_COUNT and not cn2an_drops_zero(n):
                assert chinese_numeral(n, liang=False) == cn2an.an2cn(n)


@given(st.integers(min_value=1, max_value=MAX_COUNT))
def test_liang_only_replaces_er(n):
    with_liang, without = chinese_numeral(n), chinese_numeral(n, liang=False)
    assert len(with_liang) == len(without)
    assert all(a == b or (a, b) == ("两", "二") for a, b in zip(with_liang, without, strict=True))


def test_use_liang_contexts():
    assert use_liang("二千二百二十二") == "两千二百二十二"
    assert use_liang("十二万零二千") == "十二万零二千"


@pytest.mark.parametrize("n, short, words", [
    (1, "1", "1"), (999, "999", "999"), (1_000, "1K", "1 thousand"), (65_000_000, "65M", "65 million"),
    (117_000_000, "117M", "117 million"), (1_542_000_000, "1.54B", "1.54 billion"),
    (175_000_000_000, "175B", "175 billion"), (10**12, "1T", "1 trillion"), (MAX_COUNT, "1Q", "1 quadrillion"),
    (999_700, "1M", "1 million"),  # rounding up to the next unit moves to that unit
])
def test_english(n, short, words):
    assert english_short(n) == short
    assert english_words(n) == words


@pytest.mark.parametrize("n, expected", [
    (9_990, "9990"), (10_000, "1万"), (65_000_000, "6500万"), (117_000_000, "1.17亿"), (200_000_000, "2亿"),
    (175_000_000_000, "1750亿"), (10**12, "1万亿"), (99_995_000, "1亿"),
])
def test_chinese_short(n, expected):
    assert chinese_short(n) == expected


@pytest.mark.parametrize("bad", [0, -5, MAX_COUNT + 1])
def test_out_of_range_is_a_clear_error(bad):
    for f in (chinese_numeral, english_short, english_words, chinese_short):
        with pytest.raises(ValueError, match="between 1 and 10"):
            f(bad)


@pytest.mark.parametrize("bad", [1.5, "12", True])
def test_non_integers_are_rejected(bad):
    with pytest.raises(TypeError, match="n must be an int"):
        chinese_numeral(bad)


def test_digits_must_be_positive():
    with pytest.raises(ValueError, match="digits"):
        english_short(1_000, digits=0)
