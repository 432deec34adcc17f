"""Datasets used by the book: number readings (Chapter 1) and Shakespeare's plays (Chapter 2)."""
