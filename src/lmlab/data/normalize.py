"""Bring foreign text to Penn Treebank conventions (Mikolov's preprocessed PTB), the same way for every model.

What PTB looks like, and so what this module produces, one sentence per line (each line ends in ``<eos>``):

1. lower case;
2. no punctuation except what PTB kept: ``$ & # '`` and the periods inside abbreviations (``mr.``, ``u.s.``);
   commas, sentence-final periods, quotes, brackets, colons, semicolons, ``!`` and ``?`` are removed;
3. clitics split off as PTB does: ``don't`` -> ``do n't``, ``it's`` -> ``it 's``, also ``'re 've 'll 'd 'm``,
   and a plural possessive ``investors'`` -> ``investors '``;
4. numbers become ``N``: a token of digits with optional ``, . / :`` separators (``1,000``, ``3.5``, ``1/2``);
   ``%`` becomes ``N`` too (PTB has no ``%``). Words that merely contain digits stay (``1980s``, ``30-year``);
5. hyphenated words stay one token (PTB: ``third-quarter``);
6. sentences: text is split into paragraphs (blank lines, or one per line for line-based corpora), then into
   sentences after ``.``, ``!`` or ``?`` followed by a space and an upper-case letter, a quote or a digit, except
   after a known abbreviation (``Mr.``, ``Dr.``, ``U.S.`` ...).

Source-specific clean-up before that:
- ``wikitext``: headings (``= = Title = =``) are dropped; the tokenizer's ``@-@``, ``@,@``, ``@.@`` joiners are
  undone (``1 @,@ 000`` -> ``1,000`` -> ``N``); WikiText's own ``<unk>`` stays ``<unk>``;
- ``raw`` (any text file, Tiny Shakespeare, PubMed): lines that end with ``:`` and have at most four words are
  speaker tags or headings (``First Citizen:``) and are dropped;
- ``ptb``: nothing at all; the text is already in the target form.
"""

from __future__ import annotations

import re

from lmlab.data.vocab import UNK

KINDS = ("ptb", "wikitext", "raw")

ABBREVIATIONS = {
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sen.", "rep.", "gov.", "gen.", "col.", "lt.", "sgt.", "st.", "jr.",
    "sr.", "co.", "corp.", "inc.", "ltd.", "bros.", "no.", "vs.", "etc.", "e.g.", "i.e.", "u.s.", "u.k.", "u.n.",
    "jan.", "feb.", "mar.", "apr.", "aug.", "sept.", "sep.", "oct.", "nov.", "dec.", "fig.", "al.", "approx.",
}
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_NUMBER = re.compile(r"^[+-]?(\d+([,.:/]\d+)*|[,.]\d+)$")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_WIKI_HEADING = re.compile(r"^\s*(=\s+)+.*?(\s+=)+\s*$")
_SPEAKER = re.compile(r"^\s*\S+(\s+\S+){0,3}:\s*$")
# Characters PTB does not have: removed wherever they stand.
_DROP = re.compile(r"[\"“”‘’`´,;:!?()\[\]{}<>*=_|~^]")


def normalize_text(text: str, kind: str) -> list[list[str]]:
    """Sentences (lists of PTB-style tokens) of a text of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown text kind '{kind}': choose one of {', '.join(KINDS)}")
    if kind == "ptb":
        return [line.split() for line in text.splitlines()]
    sentences = []
    for paragraph in _paragraphs(text, kind):
        for sentence in split_sentences(paragraph):
            tokens = tokenize(sentence)
            if tokens:
                sentences.append(tokens)
    return sentences


def _paragraphs(text: str, kind: str) -> list[str]:
    if kind == "wikitext":
        # WikiText has one paragraph per line; headings are structure, not prose.
        lines = [line for line in text.splitlines() if line.strip() and not _WIKI_HEADING.match(line)]
        return [_undo_wikitext(line) for line in lines]
    lines = [line for line in text.splitlines() if not _SPEAKER.match(line)]
    blocks, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(" ".join(current))
            current = []
    return blocks


def _undo_wikitext(line: str) -> str:
    return line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")


def split_sentences(paragraph: str) -> list[str]:
    pieces = _SENTENCE_END.split(paragraph.strip())
    sentences: list[str] = []
    for piece in pieces:
        # Re-join a split made after an abbreviation ("Mr. Smith").
        if sentences and sentences[-1].split()[-1].lower() in ABBREVIATIONS:
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return sentences


def tokenize(sentence: str) -> list[str]:
    """PTB-style tokens of one sentence (rules 1-5 of the module docstring)."""
    tokens: list[str] = []
    text = sentence.replace("%", " % ").replace("$", " $ ").replace("&", " & ").replace("#", " # ")
    text = text.replace("—", " ").replace("–", " ").replace("--", " ")
    for raw in text.split():
        if raw == UNK:
            tokens.append(UNK)
            continue
        word = _DROP.sub("", raw.lower().replace("’", "'"))
        if word == "%":
            tokens.append("N")
            continue
        # A trailing period ends a sentence unless the word is an abbreviation or an initial ("j.").
        if word.endswith(".") and word not in ABBREVIATIONS and not re.fullmatch(r"([a-z]\.)+", word):
            word = word.rstrip(".")
        word = word.strip("'") if word.startswith("'") and word not in ("'s", "'re", "'ve", "'ll", "'d", "'m") else word
        if not word or word in {"-", "."}:
            continue
        tokens.extend(_split_clitics(word))
    return ["N" if _NUMBER.match(t) else t for t in tokens]


def _split_clitics(word: str) -> list[str]:
    if word.endswith("s'") and len(word) > 2:
        return [word[:-1], "'"]
    match = _CLITIC.match(word)
    if match and match.group(1) not in ("", "'"):
        return [match.group(1), match.group(2)]
    return [word]
