from __future__ import annotations

import pytest

from lmlab.data.normalize import normalize_text, split_sentences, tokenize


@pytest.mark.parametrize("text,expected", [
    ("Don't stop.", ["do", "n't", "stop"]),
    ("It's the investors' money", ["it", "'s", "the", "investors", "'", "money"]),
    ("They'll say we've won, I'm sure", ["they", "'ll", "say", "we", "'ve", "won", "i", "'m", "sure"]),
    ("Prices rose 3.5% to $1,000 in 1990s", ["prices", "rose", "N", "N", "to", "$", "N", "in", "1990s"]),
    ("A 30-year third-quarter (loss)!", ["a", "30-year", "third-quarter", "loss"]),
    ("Mr. Smith of the U.S. said: \"no\"", ["mr.", "smith", "of", "the", "u.s.", "said", "no"]),
    ("AT&T and R&D", ["at", "&", "t", "and", "r", "&", "d"]),
    ("1/2 of 12:30 and .5", ["N", "of", "N", "and", "N"]),
    ("the <unk> larvae", ["the", "<unk>", "larvae"]),
])
def test_tokenize_follows_ptb_conventions(text, expected):
    assert tokenize(text) == expected


def test_sentences_split_after_final_punctuation_but_not_abbreviations():
    assert split_sentences("Mr. Smith came. He left! Did he? yes.") == ["Mr. Smith came.", "He left!", "Did he? yes."]


def test_wikitext_headings_and_joiners():
    text = " = Title = \n \n = = Section = = \n It was 1 @,@ 000 km long @-@ ish . It weighs 6 @.@ 5 kg . \n"
    assert normalize_text(text, "wikitext") == [["it", "was", "N", "km", "long-ish"], ["it", "weighs", "N", "kg"]]


def test_raw_text_drops_speaker_tags_and_joins_paragraph_lines():
    text = "First Citizen:\nBefore we proceed any further,\nhear me speak.\n\nAll:\nSpeak, speak.\n"
    assert normalize_text(text, "raw") == [["before", "we", "proceed", "any", "further", "hear", "me", "speak"],
                                           ["speak", "speak"]]


def test_ptb_text_is_left_as_is():
    assert normalize_text("a b <unk>\n\nN c\n", "ptb") == [["a", "b", "<unk>"], [], ["N", "c"]]
