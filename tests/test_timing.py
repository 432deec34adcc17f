"""The timing helper: one warm-up call, then the fastest of ``repeats`` (no assertion on speed itself)."""

import pytest

from llmbook.timing import fastest


def test_fastest_warms_up_once_then_times_each_repeat():
    calls = []
    seconds = fastest(lambda: calls.append(1), repeats=4)
    assert len(calls) == 5 and seconds >= 0.0
    with pytest.raises(ValueError, match="repeats"):
        fastest(lambda: None, repeats=0)
