"""The OpenAI protocol: chat completions, completions, embeddings and models under ``/v1``."""
