"""The models of the book's storyline and their published parameter counts.

Each count is the one its paper reports (the citation key names the paper in book/references.bib). GPT-1's paper
gives the architecture but no count; the "117M" comes from the GPT-2 paper's table of model sizes, whose smallest
model is GPT-1's size. The month is when the paper first appeared (on arXiv, or OpenAI's site for GPT-1 and GPT-2).

Introduced in the introduction and the appendix "Counting parameters".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedModel:
    """A model as its paper reports it: name, year and month of the paper, parameter count, and the bibliography key."""

    name: str
    year: int
    month: int
    parameters: int
    cite: str

    @property
    def decimal_year(self) -> float:
        """The middle of the paper's month as a fraction of years, e.g. June 2017 -> 2017.46: a time axis for plots."""
        return self.year + (self.month - 0.5) / 12


STORYLINE = (
    PublishedModel("Transformer (base)", 2017, 6, 65_000_000, "vaswani2017attention"),
    PublishedModel("Transformer (big)", 2017, 6, 213_000_000, "vaswani2017attention"),
    PublishedModel("GPT-1", 2018, 6, 117_000_000, "radford2019language"),
    PublishedModel("BERT-base", 2018, 10, 110_000_000, "devlin2019bert"),
    PublishedModel("BERT-large", 2018, 10, 340_000_000, "devlin2019bert"),
    PublishedModel("GPT-2", 2019, 2, 1_542_000_000, "radford2019language"),
    PublishedModel("GPT-3", 2020, 5, 175_000_000_000, "brown2020language"),
    PublishedModel("Chinchilla", 2022, 3, 70_000_000_000, "hoffmann2022training"),
)
