"""Engines that relay to an OpenAI-compatible upstream over HTTP (vLLM, SGLang, Ollama,
Zhipu's cloud, OpenAI): the engine, the wire format it reads and writes, and the tokenizer
estimate for an upstream that reports no usage."""
