"""Where the tests' reference implementations are known to be wrong, in one place."""


def cn2an_drops_zero(n: int) -> bool:
    """cn2an's one known slip: an all-zero 万 or 亿 group followed by a four-digit group loses its 零.

    For 500,003,530 cn2an writes 五亿三千五百三十; the schoolbook reading is 五亿零三千五百三十.
    """
    groups = []
    while n:
        n, group = divmod(n, 10**4)
        groups.insert(0, group)  # highest first
    gap = False
    for group in groups[1:]:
        if group == 0:
            gap = True
        elif gap and group >= 1000:
            return True
        else:
            gap = False
    return False
