"""Content safety: the moderation seam, the built-in word lists, the output window
(``docs/moderation.md``). Pure code below the feature packages: it imports only core."""

from openmaas.moderation.matcher import Match, WordMatcher, normalise
from openmaas.moderation.seam import (
    FILTERED_INPUT,
    FILTERED_OUTPUT,
    Chain,
    Moderator,
    OutputGuard,
    PerOrganization,
    WordLists,
    build_moderator,
    load_plugin,
    read_list,
)

__all__ = [
    "FILTERED_INPUT",
    "FILTERED_OUTPUT",
    "Chain",
    "Match",
    "Moderator",
    "OutputGuard",
    "PerOrganization",
    "WordLists",
    "WordMatcher",
    "build_moderator",
    "load_plugin",
    "normalise",
    "read_list",
]
