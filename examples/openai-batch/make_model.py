"""Build the tiny chat model this example runs: a random 2-layer GPT-2 with a character-level
tokenizer and a chat template, written to ./tiny-chat (built offline in a few seconds).

Its replies are random characters: the example shows the file formats, not a useful model. Point
[model] path at any local Hugging Face chat model folder (safetensors weights) for real replies.

    python make_model.py
"""

from pathlib import Path

from infermill.testing.llm import make_tiny_llm

if __name__ == "__main__":
    folder = make_tiny_llm(Path(__file__).resolve().parent / "tiny-chat", max_positions=256)
    print(f"wrote {folder}")
