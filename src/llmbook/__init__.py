"""llmbook: the package behind 'A Quick Guide to LLMs'. Chapters import from its modules."""

__version__ = "0.1.0"
