"""The word matcher (moderation/matcher.py): Aho-Corasick over NFKC + case-folded text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openmaas.moderation import WordMatcher, normalise


def found(words: list[str], text: str) -> str | None:
    match = WordMatcher(words).first(text)
    return None if match is None else text[match.start : match.end]


def test_english_words_are_found_whatever_their_case() -> None:
    assert found(["secret"], "a SeCrEt plan") == "SeCrEt"
    assert found(["secret"], "nothing to see") is None


def test_full_width_letters_match_half_width_words() -> None:
    assert normalise("ＳＥＣＲＥＴ") == "secret"
    assert found(["secret"], "the ＳＥＣＲＥＴ plan") == "ＳＥＣＲＥＴ"
    assert found(["ｓｅｃｒｅｔ"], "a Secret") == "Secret"  # the list itself full-width


def test_chinese_words_are_found() -> None:
    assert found(["敏感词"], "这里有一个敏感词。") == "敏感词"
    assert found(["敏感词"], "这里没有") is None


def test_overlapping_words_report_the_one_ending_first() -> None:
    # "she" ends before "hers" does; "he" ends with "she", which is the longer one there
    match = WordMatcher(["he", "she", "hers"]).first("ushers")
    assert match is not None and (match.word, match.start, match.end) == ("she", 1, 4)


def test_a_word_inside_a_longer_one_is_found_through_the_failure_links() -> None:
    assert found(["abcd", "bc"], "xabcx") == "bc"
    assert found(["aab"], "aaab") == "aab"


def test_a_character_that_normalises_to_several_maps_back_to_itself() -> None:
    match = WordMatcher(["ss"]).first("straße")
    assert match is not None and match.start == 4 and match.end == 5


def test_no_words_match_nothing() -> None:
    matcher = WordMatcher(["", "  "])
    assert not matcher and matcher.first("anything") is None and matcher.longest == 0


@given(st.lists(st.text("abc", min_size=1, max_size=4), min_size=1, max_size=5), st.text("abcx"))
def test_the_first_match_agrees_with_a_plain_search(words: list[str], text: str) -> None:
    match = WordMatcher(words).first(text)
    ends = [text.find(w) + len(w) for w in words if w in text]
    if not ends:
        assert match is None
    else:
        assert match is not None and match.end == min(ends)
        assert any(text[match.start : match.end] == w for w in words)
        assert not any(w in text[: match.start] for w in words)
