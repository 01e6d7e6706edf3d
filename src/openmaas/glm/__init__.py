"""GLM-native formats: chat-template rendering and incremental output parsing.

Home of the GLM-4 / GLM-4.5+ prompt renderers and the streaming parser for reasoning and
tool calls (the GLM protocols issue). Imports only ``openmaas.core``.
"""
