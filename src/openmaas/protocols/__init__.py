"""Protocol adapters: wire JSON <-> core types, core events -> wire frames, errors -> wire bodies.

Each protocol lives in its own subpackage and imports only ``openmaas.core``.
"""
