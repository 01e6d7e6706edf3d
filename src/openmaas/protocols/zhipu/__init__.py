"""The Zhipu ``paas/v4`` protocol (BigModel / Z.ai): chat completions, async jobs,
embeddings and models under ``/api/paas/v4``."""
