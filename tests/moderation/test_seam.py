"""The seam (moderation/seam.py): word lists from files, the output window that holds back
a tail, a plugin loaded by import path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmaas.core.errors import ConfigurationError
from openmaas.moderation import (
    OutputGuard,
    WordLists,
    WordMatcher,
    build_moderator,
    load_plugin,
)
from openmaas.settings import Settings


def lists(tmp_path: Path, *words: str) -> Path:
    path = tmp_path / "words.txt"
    path.write_text("# a comment\n" + "\n".join(words) + "\n\n", encoding="utf-8")
    return path


async def test_lists_are_read_from_files_one_word_a_line(tmp_path: Path) -> None:
    moderator = build_moderator({"words": lists(tmp_path, "secret plan", "敏感词")}, None)
    assert moderator is not None and moderator.holdback == len("secret plan") - 1
    assert await moderator.check_input("o", ["hi", "a Secret Plan"]) == "word_list"
    assert await moderator.check_input("o", ["有敏感词"]) == "word_list"
    assert await moderator.check_input("o", ["a comment"]) is None  # comments are no words


def test_no_lists_and_no_plugin_is_off(tmp_path: Path) -> None:
    assert build_moderator({}, None) is None
    assert build_moderator({"words": lists(tmp_path)}, None) is None  # a list without words


async def test_organizations_get_their_own_lists(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("beta-long-word\n", encoding="utf-8")
    named = {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt"}
    moderator = build_moderator(named, None, {"org_a": ["a"], "org_off": []})
    assert moderator is not None and moderator.holdback == len("beta-long-word") - 1
    assert await moderator.check_input("org_a", ["alpha"]) == "word_list"
    assert await moderator.check_input("org_a", ["beta-long-word"]) is None  # not its list
    assert await moderator.check_input("org_off", ["alpha beta-long-word"]) is None
    assert await moderator.check_output("org_off", "alpha") is None
    assert await moderator.check_input("org_other", ["beta-long-word"]) == "word_list"
    assert await moderator.check_output("org_other", "an alpha") == 3


def test_an_organization_naming_an_unknown_list_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="nope"):
        build_moderator({"words": lists(tmp_path, "x")}, None, {"org_a": ["nope"]})


def test_the_setting_names_lists_or_takes_their_stems() -> None:
    settings = Settings(moderation_lists="/etc/om/political.txt, ads=/srv/ads-zh.txt")
    assert settings.moderation_list_paths == {
        "political": Path("/etc/om/political.txt"),
        "ads": Path("/srv/ads-zh.txt"),
    }
    assert Settings().moderation_list_paths == {}


def test_a_missing_list_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="missing.txt"):
        build_moderator({"missing": tmp_path / "missing.txt"}, None)


async def feed_all(guard: OutputGuard, chunks: Sequence[str]) -> tuple[str, bool]:
    sent = ""
    for chunk in chunks:
        text, cut = await guard.feed(("text", 0), chunk)
        sent += text
        if cut:
            return sent, True
    return sent + "".join(text for _, text in guard.drain()), False


async def test_a_word_split_across_chunks_is_caught_and_never_sent() -> None:
    guard = OutputGuard(WordLists(["secret"]), "o")
    sent, cut = await feed_all(guard, ["this is a se", "cr", "et plan"])
    assert cut and sent == "this is a "


async def test_a_chinese_word_split_across_chunks_is_caught() -> None:
    guard = OutputGuard(WordLists(["敏感词"]), "o")
    sent, cut = await feed_all(guard, ["这是敏", "感", "词吗"])
    assert cut and sent == "这是"


async def test_clean_output_is_sent_whole_once_drained() -> None:
    guard = OutputGuard(WordLists(["secret"]), "o")
    first, cut = await guard.feed(("text", 0), "hello world")
    assert not cut and first == "hello "  # the last five characters wait for the next window
    sent, cut = await feed_all(guard, [" and more"])
    assert not cut and first + sent == "hello world and more"


async def test_text_and_reasoning_have_windows_of_their_own() -> None:
    guard = OutputGuard(WordLists(["secret"]), "o")
    await guard.feed(("reasoning", 0), "sec")
    text, cut = await guard.feed(("text", 0), "ret")
    assert not cut and text == ""
    assert sorted(guard.drain()) == [(("reasoning", 0), "sec"), (("text", 0), "ret")]


class Upstream:
    """An external moderator as a plugin would write one."""

    holdback = 0

    async def check_input(self, org_id: str, texts: Sequence[str]) -> str | None:
        return "external" if any("forbidden" in t for t in texts) else None

    async def check_output(self, org_id: str, text: str) -> int | None:
        index = text.find("!")
        return None if index < 0 else index


def make_upstream() -> Upstream:
    return Upstream()


async def test_a_plugin_is_loaded_by_import_path_and_chained_with_the_lists(
    tmp_path: Path,
) -> None:
    assert isinstance(load_plugin(f"{__name__}:make_upstream"), Upstream)
    moderator = build_moderator({"words": lists(tmp_path, "secret")}, f"{__name__}:make_upstream")
    assert moderator is not None and moderator.holdback == 5
    assert await moderator.check_input("o", ["forbidden"]) == "external"
    assert await moderator.check_input("o", ["secret"]) == "word_list"
    assert await moderator.check_output("o", "hey! secret") == 3
    assert await moderator.check_output("o", "a secret!") == 2


def test_a_plugin_that_cannot_be_imported_stops_the_start() -> None:
    with pytest.raises(ConfigurationError):
        load_plugin("openmaas.no_such_module:factory")
    with pytest.raises(ConfigurationError):
        load_plugin("builtins:dict")  # returns no Moderator


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text("ab机密", min_size=1, max_size=3), min_size=1, max_size=3),
    st.text("ab机密Ａ", max_size=24),
    st.lists(st.integers(0, 24), max_size=6),
)
async def test_any_split_of_the_output_sends_exactly_the_text_before_the_first_word(
    words: list[str], text: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] or [""]
    guard = OutputGuard(WordLists(words), "o")
    sent, cut = await feed_all(guard, chunks)
    match = WordMatcher(words).first(text)
    assert cut == (match is not None)
    assert sent == (text if match is None else text[: match.start])
