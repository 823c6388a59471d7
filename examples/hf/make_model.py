"""Build the example's models and data (offline, a few seconds):

* model/: a tiny BERT text classifier (2 layers, random weights) saved with save_pretrained, with its
  WordPiece tokenizer; its labels are NEGATIVE/POSITIVE, its predictions meaningless but real
* nli/: a tiny BERT with NLI labels (contradiction/neutral/entailment) for zero-shot classification
* data/reviews.csv: 500 short reviews

Swap in a real model by pointing [model] path at any folder saved with save_pretrained, e.g.
distilbert-base-uncased-finetuned-sst-2-english downloaded beforehand.

    python make_model.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from infermill.testing.tiny_hf import save_tiny_model

HERE = Path(__file__).resolve().parent
OPENINGS = ["I love", "I hate", "I like", "This is a great", "This is a terrible", "What an awful", "A fine"]
THINGS = ["movie", "book", "film", "service", "food", "day"]
ENDINGS = ["", " today", " and the music was good", ", not good at all", ". Very sad.", "!", " in paris"]


def main() -> None:
    save_tiny_model(HERE / "model", "text-classification", seed=0)
    save_tiny_model(HERE / "nli", "zero-shot-classification", seed=0)
    rng = random.Random(0)
    (HERE / "data").mkdir(exist_ok=True)
    with open(HERE / "data" / "reviews.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review_id", "text"])
        for i in range(500):
            writer.writerow([i, f"{rng.choice(OPENINGS)} {rng.choice(THINGS)}{rng.choice(ENDINGS)}"])
    print("wrote model/, nli/ and data/reviews.csv; next: infermill run job.toml")


if __name__ == "__main__":
    main()
