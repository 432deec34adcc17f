"""Reading large counts: English short scale (K, M, B, T) and Chinese units (万 = 10^4, 亿 = 10^8).

English groups digits by thousands, Chinese by ten-thousands, so 20M is 两千万 ("two thousand ten-thousands") and
200M is 两亿. Supported range: every integer from 1 to 10^15.

The Chinese reading follows the schoolbook rules, which the converter cn2an also implements (except that it drops
the 零 after an all-zero group when the next group has four digits: 500,003,530 is 五亿零三千五百三十):
- digits are read in groups of four with the units 万 and 亿; 10^12 is 万亿 and 10^15 is 一千万亿;
- zeros at the end of a group are not read; any other run of zeros is read as a single 零
  (10,005 = 一万零五, 100,000,500 = 一亿零五百, 10,002,000 = 一千万两千);
- a leading 一十 is read 十 (15 = 十五, 150,000 = 十五万) but not inside a number (110 = 一百一十).
- 两 or 二: everyday usage says 两千, 两万, 两亿, 两千万 and 二十, 十二万, 二百. We write 两 for a 2 that stands
  directly before 千, 万 or 亿 and is not preceded by 十 or 零; everywhere else 二. (二百 and 两百 are both common;
  we keep 二百 as in standard written usage.)

Introduced in the appendix "Counting parameters".
"""

from __future__ import annotations

import re

MAX_COUNT = 10**15
DIGITS = "零一二三四五六七八九"
# (value, abbreviation, word), largest first. "Q" for quadrillion is less settled than K, M, B and T.
ENGLISH_SCALE = ((10**15, "Q", "quadrillion"), (10**12, "T", "trillion"), (10**9, "B", "billion"),
                 (10**6, "M", "million"), (10**3, "K", "thousand"), (1, "", ""))
CHINESE_SCALE = ((10**12, "万亿"), (10**8, "亿"), (10**4, "万"), (1, ""))


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_COUNT:
        raise ValueError(f"n must be between 1 and 10^15, got {n}")


def _significant(x: float, digits: int) -> str:
    """x to `digits` significant digits, without trailing zeros: 1.170 -> '1.17', 65.0 -> '65'."""
    text = f"{x:.{digits}g}"
    if "e" in text:  # e.g. 1e+03 for x = 999.7 rounded up: write it out
        text = f"{float(text):.0f}"
    return text


def use_liang(numeral: str) -> str:
    """Replace 二 by 两 where everyday Chinese says 两 (before 千, 万, 亿, not after 十 or 零).

    >>> use_liang("二千万")
    '两千万'
    """
    return re.sub(r"(?<![十零])二(?=[千万亿])", "两", numeral)


def _group_numeral(n: int) -> str:
    """0 < n < 10^4 in characters, zeros inside read as one 零, trailing zeros silent: 1010 -> 一千零一十."""
    out: list[str] = []
    pending_zero = False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = n // value % 10
        if digit == 0:
            pending_zero = bool(out)
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(DIGITS[digit] + unit)
    return "".join(out)


def chinese_numeral(n: int, liang: bool = True) -> str:
    """The full Chinese reading of n, e.g. 117,000,000 -> 一亿一千七百万; ``liang=False`` keeps 二 everywhere."""
    _check_count(n)
    high, low = divmod(n, 10**8)  # high counts 亿 and may itself reach 10^7: 10^15 = 一千万亿
    # Four-digit groups, highest first. When the 亿 group is empty, its unit moves onto the 万 group above it.
    groups = [(high // 10**4, "万亿" if high % 10**4 == 0 else "万"), (high % 10**4, "亿"),
              (low // 10**4, "万"), (low % 10**4, "")]
    parts: list[str] = []
    gap = False
    for value, unit in groups:
        if value == 0:
            gap = bool(parts)  # a whole group of zeros inside the number is read as 零
            continue
        if parts and (gap or value < 1000):  # zeros between this group and the previous one
            parts.append("零")
        parts.append(_group_numeral(value) + unit)
        gap = False
    text = "".join(parts)
    if text.startswith("一十"):
        text = text[1:]
    return use_liang(text) if liang else text


def _short(n: int, scales: tuple, digits: int) -> tuple[str, int]:
    """n rounded to `digits` significant digits in the largest unit it reaches; returns (number, index of unit)."""
    if not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be a positive int, got {digits!r}")
    for i, (scale, *_) in enumerate(scales):
        if n >= scale:
            text = _significant(n / scale, digits)
            if i > 0 and float(text) * scale >= scales[i - 1][0]:  # rounding reached the next unit: 999.7K -> 1M
                return _significant(n / scales[i - 1][0], digits), i - 1
            return text, i
    raise AssertionError("unreachable: the last scale is 1")


def english_short(n: int, digits: int = 3) -> str:
    """117,000,000 -> '117M', 1,542,000,000 -> '1.54B' (short scale, `digits` significant digits)."""
    _check_count(n)
    number, i = _short(n, ENGLISH_SCALE, digits)
    return number + ENGLISH_SCALE[i][1]


def english_words(n: int, digits: int = 3) -> str:
    """117,000,000 -> '117 million', 1,542,000,000 -> '1.54 billion'."""
    _check_count(n)
    number, i = _short(n, ENGLISH_SCALE, digits)
    return f"{number} {ENGLISH_SCALE[i][2]}".rstrip()


def chinese_short(n: int, digits: int = 3) -> str:
    """117,000,000 -> '1.17亿', 65,000,000 -> '6500万', 10^12 -> '1万亿': digits with a Chinese unit, as in the news."""
    _check_count(n)
    number, i = _short(n, CHINESE_SCALE, digits)
    return number + CHINESE_SCALE[i][1]
