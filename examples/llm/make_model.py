"""Build the tiny language model this example runs: a random 2-layer GPT-2 with a character-level
tokenizer and a chat template, written to ./tiny-lm (about 300 KB, built offline in a few seconds).

Its text is random characters: the example shows the job, not a useful model. Point [model] path at
any local Hugging Face causal LM folder (safetensors weights) for real answers.

    python make_model.py
"""

from pathlib import Path

from infermill.testing.llm import make_tiny_llm

if __name__ == "__main__":
    folder = make_tiny_llm(Path(__file__).resolve().parent / "tiny-lm", max_positions=256)
    print(f"wrote {folder}")
