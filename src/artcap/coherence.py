"""Is a caption a sentence a person would keep? Four defects, each a precise word-level rule (docs/evaluation.md, "Coherence").

Captions are read as artcap's words (``artcap.text.tokenize``: lower case, punctuation dropped, in-word apostrophes
kept); a clitic ``'s`` is split off ("she's" -> "she", "'s"). Clauses are the pieces between commas, semicolons,
"and" and "but" (after tokenising, only the two words are left; both captions and references are read that way).

- **mixed genders**: a subject or reflexive pronoun (he, she, himself, herself) whose nearest preceding person
  noun has the other gender, in a caption with no earlier word of the pronoun's own gender (noun or pronoun): the
  pronoun can only refer back to that person. "the man looks like she has a sense of people" is flagged; "the man
  looks at the woman and she smiles", "she looks at him" and "the woman looks at him" (object pronouns may
  name someone else) are not. A plural or ungendered person noun (people, figure, child) in between makes the
  pronoun's referent unclear, so it is not flagged.
- **dangling end**: the last word is one an English sentence cannot end on (``dangles``): an article, a possessive
  determiner, a conjunction, a modal, a subject pronoun, "than", "very" ("... looks like a", "... it looks like it
  could"); a form of "be", "of" or "'s", unless a wh-word came before it ("i wonder what it is" is a sentence, "it
  could be" is not; the same exemption holds for "to" and "like"); "to" after a verb that takes an infinitive ("trying to", "going
  to"; "attracted to" is a sentence); "like" after look, feel, seem, sound or a form of "be" ("it looks like";
  "child like" is a sentence).
- **repeated clause**: a clause of two or more words occurs twice, verbatim ("the colors are calming and the colors
  are calming").
- **unfinished clause**: some clause (not only the last) dangles on a word that opens a complement the clause then
  never gives: "to", "like", "of", "be" and its forms, an article or a possessive determiner. It catches a sentence
  that breaks off in the middle and goes on ("he is trying to be and the sky is dark") as well as at its end
  ("looks like he is trying to be", which is also a dangling end). A dangling end that is not an unfinished clause
  ends on a conjunction, a modal, a subject pronoun or "very" ("... and", "... makes me feel like i").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .text import tokenize

MALE_PERSONS = frozenset("""man boy gentleman guy king father husband son brother prince monk priest knight lord
    sir mr grandfather uncle nephew emperor pope jesus christ bishop""".split())
FEMALE_PERSONS = frozenset("""woman girl lady queen mother wife daughter sister princess nun madonna mrs
    grandmother aunt niece bride maiden goddess empress mary""".split())
NEUTRAL_PERSONS = frozenset("""person people figure figures child children baby kid kids someone somebody couple
    family men women boys girls ladies persons artist painter subject character individual crowd soldier soldiers
    figures they them""".split())
MALE_PRONOUNS = frozenset({"he", "himself", "him", "his"})
FEMALE_PRONOUNS = frozenset({"she", "herself", "her", "hers"})
CHECKED_PRONOUNS = frozenset({"he", "she", "himself", "herself"})  # the ones that must refer back

ARTICLES = {"a", "an", "the"}
POSSESSIVE_DETERMINERS = {"my", "your", "its", "our", "their"}
CONJUNCTIONS = {"and", "or", "but", "nor", "because", "although", "though", "whereas", "if", "whether"}
MODALS = {"will", "would", "can", "could", "should", "shall", "must", "might"}
SUBJECT_PRONOUNS = {"i", "we", "he", "she", "they"}
ALWAYS_DANGLING = frozenset(ARTICLES | POSSESSIVE_DETERMINERS | CONJUNCTIONS | MODALS | SUBJECT_PRONOUNS
                            | {"than", "very"})
BE_FORMS = frozenset({"be", "am", "is", "are", "was", "were"})
WH_WORDS = frozenset({"what", "how", "who", "whom", "where", "which", "why", "when", "whatever", "wherever",
                      "whoever", "whichever"})
INFINITIVE_HEADS = frozenset("""try tries tried trying want wants wanted wanting going gonna need needs needed seem
    seems seemed appear appears appeared has have had able about wish wishes wished like likes love loves begin
    begins began start starts started supposed ought tend tends""".split())
LIKENING_VERBS = frozenset("""look looks looked looking feel feels felt feeling seem seems seemed sound sounds
    sounded""".split()) | BE_FORMS
STRANDABLE = frozenset(BE_FORMS | {"of", "'s", "to", "like"})  # may end a clause that a wh-word opened
# Words that open a complement: a clause dangling on one is unfinished ("trying to be", "looking at the").
OPENERS = frozenset({"to", "like", "of", "'s"} | BE_FORMS | ARTICLES | POSSESSIVE_DETERMINERS)
CLAUSE_BREAKS = frozenset({"and", "but"})
CLAUSE_MARKS = frozenset({",", ";"})
MIN_REPEATED_CLAUSE = 2
DEFECTS = ("mixed genders", "dangling end", "repeated clause", "unfinished clause")


def words(caption: str) -> list[str]:
    """artcap's tokens with a clitic "'s" split off ("she's" -> "she", "'s")."""
    out = []
    for token in tokenize(caption.replace(",", " , ").replace(";", " ; ")):
        if token.endswith("'s") and len(token) > 2:
            out += [token[:-2], "'s"]
        else:
            out.append(token)
    return out


def _split(caption: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The caption's words ("and"/"but" included) and its clauses as [start, end) spans of them, split at commas,
    semicolons, "and" and "but"; empty clauses dropped."""
    marked: list[str] = []
    for chunk in caption.replace(",", " , ").replace(";", " ; ").split():
        marked += [chunk] if chunk in CLAUSE_MARKS else words(chunk)
    return split_words(marked)


def split_words(marked: Sequence[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """`_split` on words already read, "," and ";" among them as clause marks."""
    tokens: list[str] = []
    spans, start = [], 0
    for word in marked:
        if word in CLAUSE_MARKS:
            spans.append((start, len(tokens)))
            start = len(tokens)
            continue
        if word in CLAUSE_BREAKS:
            spans.append((start, len(tokens)))
            start = len(tokens) + 1
        tokens.append(word)
    spans.append((start, len(tokens)))
    return tokens, [(a, b) for a, b in spans if b > a]


def clauses(caption: str) -> list[list[str]]:
    """The caption's clauses: the runs of words between commas, semicolons, "and" and "but"."""
    tokens, spans = _split(caption)
    return [tokens[a:b] for a, b in spans]


def _gender(word: str) -> str | None:
    if word in MALE_PERSONS or word in MALE_PRONOUNS:
        return "male"
    if word in FEMALE_PERSONS or word in FEMALE_PRONOUNS:
        return "female"
    return None


def mixes_genders(caption: str) -> bool:
    """A he/she/himself/herself whose only possible referent, the nearest person noun before it, has the other
    gender, with no earlier word of the pronoun's own gender."""
    return scan_genders(words(caption)).mixed


@dataclass(frozen=True)
class GenderScan:
    """What `mixes_genders` knows after some words: whether they mixed genders, the genders mentioned (nouns and
    pronouns) and the gender of the nearest person noun ("" for an ungendered one, None before any)."""

    mixed: bool = False
    seen: frozenset[str] = frozenset()
    nearest_person: str | None = None


def scan_genders(tokens: Sequence[str], scan: GenderScan = GenderScan()) -> GenderScan:
    """`scan` carried on over `tokens` (words as `words` reads them); stops at the first mixed pronoun."""
    seen, nearest_person = set(scan.seen), scan.nearest_person
    for word in tokens:
        if scan.mixed:
            break
        gender = _gender(word)
        if word in CHECKED_PRONOUNS:
            if nearest_person and nearest_person != gender and gender not in seen:
                return GenderScan(True, frozenset(seen), nearest_person)
        elif word in MALE_PERSONS or word in FEMALE_PERSONS:
            nearest_person = gender
        elif word in NEUTRAL_PERSONS:
            nearest_person = ""
        if gender:
            seen.add(gender)
    return GenderScan(scan.mixed, frozenset(seen), nearest_person)


def dangles(tokens: list[str], end: int) -> bool:
    """A sentence cannot stop after ``tokens[end - 1]``, given the words before it (the module's rules)."""
    if end < 1:
        return False
    last, earlier = tokens[end - 1], tokens[: end - 1]
    previous = earlier[-1] if earlier else ""
    if last in ALWAYS_DANGLING:
        return True
    if last in STRANDABLE and any(w in WH_WORDS for w in earlier):
        return False  # an embedded question or relative ends on it: "i wonder what it is", "what it looks like"
    if last in BE_FORMS or last in ("of", "'s"):
        return True
    if last == "to":
        return previous in INFINITIVE_HEADS  # "trying to"; "attracted to" is a sentence
    if last == "like":
        return previous in LIKENING_VERBS  # "it looks like"; "child like" is a sentence
    return False


def dangling_end(caption: str) -> bool:
    """The caption's last word cannot end an English sentence ("... trying to be", "... looks like a")."""
    return ends_dangling(words(caption))


def ends_dangling(tokens: Sequence[str]) -> bool:
    """`dangling_end` on words already read."""
    return bool(tokens) and (tokens[-1] in CLAUSE_BREAKS or dangles(tokens, len(tokens)))


def repeats_a_clause(caption: str) -> bool:
    """Some clause of two or more words occurs twice, verbatim."""
    seen = set()
    for clause in clauses(caption):
        if len(clause) >= MIN_REPEATED_CLAUSE:
            key = tuple(clause)
            if key in seen:
                return True
            seen.add(key)
    return False


def unfinished_clause(caption: str) -> bool:
    """Some clause dangles on a word that opens a complement (OPENERS): "... trying to be", "at the and ..."."""
    tokens, spans = _split(caption)
    return any(tokens[b - 1] in OPENERS and dangles(tokens, b) for _, b in spans)


DETECTORS = {"mixed genders": mixes_genders, "dangling end": dangling_end, "repeated clause": repeats_a_clause,
             "unfinished clause": unfinished_clause}


@dataclass(frozen=True)
class CoherenceFlags:
    """Per caption, which defects it has (one list of booleans per defect, in caption order)."""

    flags: dict[str, list[bool]]

    def rates(self) -> dict[str, float]:
        return {name: sum(v) / len(v) if v else 0.0 for name, v in self.flags.items()}


def coherence_flags(captions: Iterable[str]) -> CoherenceFlags:
    captions = list(captions)
    return CoherenceFlags({name: [detect(c) for c in captions] for name, detect in DETECTORS.items()})


def is_broken(caption: str) -> bool:
    """The caption has at least one of the four defects."""
    return any(detect(caption) for detect in DETECTORS.values())


def choose_unbroken(captions: Sequence[str], preference: Sequence[float]) -> int:
    """The index of the most preferred caption that has no defect (ties: the earlier one); when every caption has
    one, the most preferred of all. A rerank through this never prefers a broken caption to an unbroken one."""
    everyone = range(len(captions))
    pool = [i for i in everyone if not is_broken(captions[i])] or everyone
    return max(pool, key=lambda i: (preference[i], -i))


# ---- while a caption is being written: which next words would break it ----------------------------------------

def closing_breaks(tokens: list[str], spans: list[tuple[int, int]]) -> bool:
    """Would closing the current (last) clause of these words (`split_words`), with "and", "but" or the caption's
    end, make it unfinished or a verbatim repeat of an earlier clause? Earlier clauses were checked when closed."""
    if not spans or spans[-1][1] != len(tokens):
        return False  # nothing said yet, or the words end on a clause break: no clause is open
    start, end = spans[-1]
    if tokens[end - 1] in OPENERS and dangles(tokens, end):
        return True
    clause = tokens[start:end]
    return len(clause) >= MIN_REPEATED_CLAUSE and any(tokens[a:b] == clause for a, b in spans[:-1])


class SentenceGuard:
    """For a fixed vocabulary: the next words that would break a caption being written, so that a decoder can
    mask them. Only three kinds of word can add a defect: the end of the caption (a dangling end, or a last clause
    unfinished or repeated), "and"/"but" (closing an unfinished or repeated clause) and a word holding he, she,
    himself or herself (mixed genders). Each is judged by the detectors' own rules, so a caption written under the
    guard has none of the four defects unless it was cut off at its length limit."""

    def __init__(self, vocabulary: Sequence[str]):
        self.split = [words(w) for w in vocabulary]  # a vocabulary word as the detectors read it ("she's": 2)
        self.closers = [i for i, ws in enumerate(self.split) if ws and ws[0] in CLAUSE_BREAKS]
        self.pronouns = [i for i, ws in enumerate(self.split) if CHECKED_PRONOUNS & set(ws)]

    def banned(self, prefix: Sequence[int]) -> tuple[bool, list[int]]:
        """Word ids said so far -> (may the caption not end here, the ids it may not say next)."""
        tokens, spans = split_words([w for i in prefix for w in self.split[i]])
        closing = closing_breaks(tokens, spans)
        ids = list(self.closers) if closing else []
        genders = scan_genders(tokens)
        if genders.nearest_person and not genders.mixed:  # only then can a pronoun mix genders
            ids += [i for i in self.pronouns if scan_genders(self.split[i], genders).mixed]
        return bool(tokens) and (closing or ends_dangling(tokens)), ids
