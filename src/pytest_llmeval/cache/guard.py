"""The semantic cache's guard: does a similar request mean something else?

Sentence embeddings place "What is the largest ocean?" and "What is the smallest ocean?", or "Is X safe?" and
"Is X not safe?", as close together as true paraphrases (measured here with all-MiniLM-L6-v2: negated pairs
have a median cosine of 0.898, paraphrases 0.904), so a similarity threshold alone serves wrong answers. The
guard compares what the two texts *say*, cheaply and without a model, and rejects a pair when they differ in:

- negation (not, n't, no, never, none, nothing, nobody, neither, nor, without, except, cannot), by count;
- numbers (digits, decimals, number words, ordinals), as sets;
- quoted text and code (``"..."``, ``'...'``, backticks, identifiers with ``_``, ``.``, ``()`` or camelCase);
- names: a capitalised word or acronym of one text that the other does not contain at all;
- polarity words from a built-in table (largest/smallest, before/after, increase/decrease, true/false...);
- the order of the same names around a relation ("Does A depend on B" vs "Does B depend on A");
- question words (who, when, where, why, how, how many, how much; "what" and "which" are interchangeable).

It is deliberately conservative: a rejected paraphrase costs one model call, a wrong hit serves a wrong
answer. It cannot see meaning changes outside these classes (an antonym missing from its table, a changed
verb: "install" vs "uninstall" is caught only because the table has it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from functools import lru_cache

NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "nobody", "noone", "neither", "nor", "without",
                       "except", "nowhere", "cannot"})
QUESTION_WORDS = {"who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where", "why": "why",
                  "how": "how"}
NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6,
    "billion": 10**9, "dozen": 12, "half": 0.5, "twice": 2, "double": 2, "triple": 3, "single": 1,
}
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
            "ninth": 9, "tenth": 10, "last": -1}
# Groups of words on opposite sides of one scale; a text using one side but not the other differs in meaning.
POLARITY: list[tuple[set[str], set[str]]] = [
    ({"largest", "biggest", "greatest", "longest", "tallest", "highest", "heaviest", "deepest", "widest", "most",
      "maximum", "max", "top", "best", "fastest", "hottest", "richest", "strongest"},
     {"smallest", "least", "shortest", "lowest", "shallowest", "narrowest", "minimum", "min", "worst",
      "slowest", "coldest", "poorest", "weakest", "bottom", "tiniest"}),
    ({"large", "big", "great", "long", "tall", "high", "heavy", "deep", "wide", "fast", "hot", "rich", "strong",
      "larger", "bigger", "greater", "longer", "taller", "higher", "heavier", "deeper", "wider", "faster",
      "hotter", "more", "above", "over", "older", "oldest", "early", "earlier", "earliest"},
     {"small", "little", "short", "low", "shallow", "narrow", "slow", "cold", "poor", "weak", "smaller",
      "shorter", "lower", "shallower", "narrower", "slower", "colder", "fewer", "less", "below",
      "under", "younger", "youngest", "newer", "newest", "late", "later", "latest"}),
    ({"before", "prior", "preceding", "previous"}, {"after", "following", "next", "subsequent"}),
    ({"increase", "increases", "increased", "increasing", "raise", "rise", "grow", "grows", "gain", "up"},
     {"decrease", "decreases", "decreased", "decreasing", "lower", "fall", "drop", "shrink", "shrinks", "lose",
      "down", "reduce", "reduces"}),
    ({"true", "correct", "right", "valid", "yes"}, {"false", "incorrect", "wrong", "invalid"}),
    ({"add", "adds", "added", "insert", "install", "installs", "create", "creates", "enable", "enables",
      "allow", "allows", "open", "opens", "start", "starts", "import", "imports", "include", "includes",
      "buy", "buys", "win", "wins", "accept", "accepts", "encrypt", "encode", "compress", "push", "upload",
      "login", "connect", "lock", "mount", "show", "attach", "on", "input", "positive", "plus", "maximize"},
     {"remove", "removes", "removed", "delete", "uninstall", "uninstalls", "destroy", "destroys", "disable",
      "disables", "deny", "denies", "close", "closes", "stop", "stops", "export", "exports", "exclude",
      "excludes", "sell", "sells", "lose", "loses", "reject", "rejects", "decrypt", "decode", "decompress",
      "pull", "download", "logout", "disconnect", "unlock", "unmount", "hide", "detach", "off", "output",
      "negative", "minus", "minimize"}),
    ({"closest", "nearest", "near", "close", "closer", "nearer"}, {"farthest", "furthest", "far", "farther",
                                                                   "further", "distant"}),
    ({"open", "opened", "available", "online", "accepting", "accept", "accepted"},
     {"closed", "shut", "unavailable", "offline", "declining", "decline", "declined"}),
    ({"good", "better", "best", "positive", "benefit", "benefits", "pros", "advantages"},
     {"bad", "worse", "worst", "negative", "risk", "risks", "cons", "disadvantages"}),
    ({"soft", "raw", "wet"}, {"hard", "cooked", "dry"}),
    ({"read", "reads", "reading", "load", "loads", "input", "get"}, {"write", "writes", "writing", "save", "saves",
                                                                   "dump", "output", "set"}),
    ({"north", "northern"}, {"south", "southern"}),
    ({"east", "eastern"}, {"west", "western"}),
    ({"left"}, {"right"}),
    ({"first", "beginning", "start"}, {"last", "end", "final"}),
    ({"always", "all", "every", "everyone", "everything"}, {"sometimes", "some", "any", "rarely", "few"}),
    ({"cause", "causes"}, {"prevent", "prevents", "cure", "cures"}),
    ({"safe", "legal", "healthy", "possible", "able", "likely", "necessary", "required", "mandatory"},
     {"unsafe", "dangerous", "illegal", "unhealthy", "impossible", "unable", "unlikely", "unnecessary",
      "optional"}),
    ({"import", "inbound", "incoming", "receive", "receives"}, {"export", "outbound", "outgoing", "send", "sends"}),
    ({"asc", "ascending", "increasing"}, {"desc", "descending", "decreasing"}),
    ({"synchronous", "sync", "blocking"}, {"asynchronous", "async", "nonblocking"}),
    ({"upper", "uppercase"}, {"lower", "lowercase"}),
]
# Words that start sentences without being names (so "Tell me..." vs "Could you tell me..." keeps no name).
COMMON = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just let me might more most must my myself no nor not
now of off on once only or other our ours out over own please same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves tell give explain describe
list name show write find say help define compare summarize summarise calculate compute convert translate
suppose assume imagine consider hi hello hey thanks thank okay ok also quick question briefly kindly
many much number lot lots way ways kind type thing things make makes made get gets got put puts take
use used using need needed want like go goes going know way whether there's actually really exactly
""".split())

SYNONYM_SIMILARITY = 0.75  # word-embedding cosine from which a substituted word counts as a synonym
# ...and from which it does when the two requests are very close as sentences (tuned on the development set:
# there, paraphrases reworded with a near-synonym sit at 0.91-0.98, one-word meaning changes at <= 0.86).
CLOSE_SYNONYM_SIMILARITY = 0.65
CLOSE_SENTENCES = 0.9
# Title words that a name may carry in one text and drop in the other ("Mount Everest" / "Everest").
TITLES = frozenset({"mount", "mt", "lake", "river", "saint", "st", "mr", "mrs", "ms", "dr", "sir", "the"})
ROMAN = {"ii": 2, "iii": 3, "iv": 4, "vi": 6, "vii": 7, "viii": 8, "ix": 9, "xi": 11, "xii": 12}
ROLE_WORDS = frozenset({"to", "from", "than", "on", "into", "of", "against", "vs", "versus"})
_CONTRACTIONS = [
    (re.compile(r"\bcan['’]t\b", re.I), "can not"), (re.compile(r"\bwon['’]t\b", re.I), "will not"),
    (re.compile(r"\bshan['’]t\b", re.I), "shall not"), (re.compile(r"n['’]t\b", re.I), " not"),
    (re.compile(r"\bcannot\b", re.I), "can not"),
    (re.compile(r"['’]s\b", re.I), ""), (re.compile(r"['’](re|ve|ll|d|m)\b", re.I), ""),
]
_QUOTED = re.compile(r"`([^`]+)`|\"([^\"]+)\"|“([^”]+)”|(?<![\w])'([^']+)'(?![\w])")
_CODE = re.compile(r"\b[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+\b|\b\w+\(\)|\b[a-z]+_[\w]+\b|\b[a-z]+[A-Z]\w*\b")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:st|nd|rd|th)?(?![\w])|\b\d+(?:st|nd|rd|th)\b")
_WORD = re.compile(r"\b[A-Za-z][A-Za-z0-9_\-]*")
_SENTENCE = re.compile(r"(?:^|[.!?:;\n]\s*)([A-Za-z][\w\-]*)")


def _expand(text: str) -> str:
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    return text


@lru_cache(maxsize=1)
def _stemmer() -> Callable[[str], str]:
    from nltk.stem.porter import PorterStemmer  # a dependency of rouge-score; needs no data download

    return PorterStemmer().stem  # type: ignore[no-any-return]


@lru_cache(maxsize=4096)
def _features(text: str) -> dict[str, object]:
    quoted = frozenset(next(g for g in m.groups() if g is not None).strip().lower() for m in _QUOTED.finditer(text))
    code = frozenset(m.group(0) for m in _CODE.finditer(text))
    expanded = _expand(text)
    words = [w.lower() for w in _WORD.findall(expanded)]
    lowered = set(words)
    found: list[tuple[int, str]] = []  # (position, value): numbers compare in order ("2 ** 3" is not "3 ** 2")
    for m in _NUMBER.finditer(expanded):
        raw = re.sub(r"(st|nd|rd|th)$", "", m.group(0)).replace(",", "")
        found.append((m.start(), f"#{float(raw):g}" if re.fullmatch(r"[-+]?\d+(\.\d+)?", raw) else raw))
    for m in re.finditer(r"[A-Za-z]+", expanded):  # parts of hyphenated words too: "three-sentence"
        w = m.group(0).lower() if m.group(0).lower() not in ROMAN else m.group(0)
        if w in NUMBER_WORDS:
            found.append((m.start(), f"#{NUMBER_WORDS[w]:g}"))
        elif w.lower() in ROMAN and m.group(0).isupper():
            found.append((m.start(), f"#{ROMAN[w.lower()]:g}"))
        elif w in ORDINALS and w not in ("last", "second"):  # "a second" is also time; "last" is polarity
            found.append((m.start(), f"#{ORDINALS[w]:g}"))
    numbers = tuple(v for _, v in sorted(found))
    negations = sum(1 for w in words if w in NEGATIONS)
    questions = set()
    for i, w in enumerate(words):
        if w in QUESTION_WORDS:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            questions.add("how " + nxt if w == "how" and nxt in ("many", "much", "long", "old", "far", "often")
                          else QUESTION_WORDS[w])
    starts = {m.start(1) for m in _SENTENCE.finditer(expanded)}
    names: list[str] = []
    for m in _WORD.finditer(expanded):
        token = m.group(0)
        low = token.lower()
        acronym = len(token) > 1 and token.isupper()
        capitalised = token[0].isupper() and (acronym or m.start() not in starts)
        if (not capitalised or low in NEGATIONS or low in NUMBER_WORDS or low in ORDINALS or low in COMMON
                or low in TITLES or (acronym and low in ROMAN)):
            continue
        if low not in names:
            names.append(low)
    polarity = set()
    for group, (left, right) in enumerate(POLARITY):
        if lowered & left:
            polarity.add((group, 0))
        if lowered & right:
            polarity.add((group, 1))
    stem = _stemmer()
    content = tuple(w for w in words if w not in COMMON and w not in NEGATIONS and w not in NUMBER_WORDS
                    and w not in ORDINALS)
    roles: dict[str, set[str]] = {}
    for i, w in enumerate(words[:-1]):
        if w in ROLE_WORDS:
            after = next((x for x in words[i + 1:i + 4] if x not in COMMON), None)
            if after:
                roles.setdefault(w, set()).add(stem(after))
    return {"content": content, "stems": tuple(stem(w) for w in content), "quoted": quoted, "code": code,
            "numbers": numbers, "negations": negations, "questions": frozenset(questions),
            "names": tuple(names), "words": frozenset(lowered), "polarity": frozenset(polarity), "roles": roles}


def content_words(text: str) -> tuple[str, ...]:
    """The words of ``text`` that :func:`guard` may compare by word similarity (lowercase, in order)."""
    content = _features(text)["content"]
    assert isinstance(content, tuple)
    return content


def _show(values: object) -> str:
    items = sorted(values) if isinstance(values, set | frozenset) else list(values)  # type: ignore[call-overload]
    return ", ".join(str(v).lstrip("#") for v in items) or "none"


def guard(new: str, cached: str, similar: Callable[[str, str], float] | None = None,
          closeness: float = 0.0) -> str | None:
    """None when serving ``cached``'s answer for ``new`` is safe as far as the guard can tell; else why not.

    ``similar(word_a, word_b)`` (the semantic cache passes cosine similarity of word embeddings) lets a
    one- or two-word substitution through when the words are synonyms (>= :data:`SYNONYM_SIMILARITY`);
    without it, only substitutions of the same stem pass. ``closeness`` is the two requests' sentence
    similarity: from :data:`CLOSE_SENTENCES` on, a substituted word needs only :data:`CLOSE_SYNONYM_SIMILARITY`.
    A "substitution" that is a word moved elsewhere in the other text is reordering, not a substitution.
    """
    a, b = _features(new), _features(cached)
    if a["negations"] != b["negations"]:
        return f"negation differs ({a['negations']} vs {b['negations']} negating words)"
    if a["numbers"] != b["numbers"]:
        return f"numbers differ: {_show(a['numbers'])} vs {_show(b['numbers'])}"
    if a["quoted"] != b["quoted"]:
        return f"quoted text differs: {_show(a['quoted'])} vs {_show(b['quoted'])}"
    if a["code"] != b["code"]:
        return f"code differs: {_show(a['code'])} vs {_show(b['code'])}"
    words_a, words_b = a["words"], b["words"]
    names_a, names_b = a["names"], b["names"]
    content_a, content_b = a["content"], b["content"]
    stems_a, stems_b = a["stems"], b["stems"]
    assert isinstance(words_a, frozenset) and isinstance(words_b, frozenset)
    assert isinstance(names_a, tuple) and isinstance(names_b, tuple)
    assert isinstance(content_a, tuple) and isinstance(content_b, tuple)
    assert isinstance(stems_a, tuple) and isinstance(stems_b, tuple)
    missing = [n for n in names_a if n not in words_b] + [n for n in names_b if n not in words_a]
    if missing:
        return f"names differ: {', '.join(missing)}"
    # Opposite ends of one scale ("largest" here, "smallest" there).
    pol_a, pol_b = a["polarity"], b["polarity"]
    assert isinstance(pol_a, frozenset) and isinstance(pol_b, frozenset)
    for group, side in pol_a:
        if (group, 1 - side) in pol_b and (group, side) not in pol_b:
            pair = POLARITY[group]
            shown = sorted(pair[side] & words_a) + sorted(pair[1 - side] & words_b)
            return f"opposite words: {' vs '.join(shown)}"
    for group, side in pol_b:
        if (group, 1 - side) in pol_a and (group, side) not in pol_a:
            return "opposite words: " + " vs ".join(sorted(POLARITY[group][1 - side] & words_a)
                                                    + sorted(POLARITY[group][side] & words_b))
    qa, qb = a["questions"], b["questions"]
    assert isinstance(qa, frozenset) and isinstance(qb, frozenset)
    if qa and qb and qa != qb:
        return f"question words differ: {_show(qa)} vs {_show(qb)}"
    # Roles swapped: the same words after "to"/"from"/"than"/"on"... in the other order.
    roles_a, roles_b = a["roles"], b["roles"]
    assert isinstance(roles_a, dict) and isinstance(roles_b, dict)
    for role in roles_a.keys() & roles_b.keys():
        x, y = roles_a[role], roles_b[role]
        if not x & y and x <= set(stems_b) and y <= set(stems_a):
            return f"roles swapped: {role} {', '.join(sorted(x))} vs {role} {', '.join(sorted(y))}"
    if sorted(stems_a) == sorted(stems_b) and stems_a != stems_b:
        order_a = [n for n in names_a if n in names_b]
        order_b = [n for n in names_b if n in names_a]
        if len(order_a) >= 2 and order_a != order_b:
            return f"names in another order: {', '.join(order_a)} vs {', '.join(order_b)}"
    # Small substitutions ("spider" -> "ant", "boiling" -> "freezing") in otherwise aligned texts.
    matcher = difflib.SequenceMatcher(a=stems_a, b=stems_b, autojunk=False)
    needed = CLOSE_SYNONYM_SIMILARITY if closeness >= CLOSE_SENTENCES else SYNONYM_SIMILARITY
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "replace" or i2 - i1 != j2 - j1 or i2 - i1 > 2:
            continue  # only one or two words swapped word for word; longer rewrites are rephrasing
        for k, (x, y) in enumerate(zip(content_a[i1:i2], content_b[j1:j2], strict=True)):
            if stems_a[i1 + k] in stems_b or stems_b[j1 + k] in stems_a:
                continue  # the word is elsewhere in the other text: moved, not replaced
            if _word_similarity(x, y, similar) < needed:
                return f"word replaced: {x} vs {y}"
    return None


def _word_similarity(x: str, y: str, similar: Callable[[str, str], float] | None) -> float:
    stem = _stemmer()
    root = len(_common_prefix(x, y))
    sx, sy = sorted((stem(x), stem(y)), key=len)
    if sx == sy or (root >= 5 and root >= 0.7 * min(len(x), len(y))):  # painter/painted
        return 1.0
    if len(sx) >= 4 and sy.startswith(sx):  # an abbreviation's stem: dicts/dictionaries
        return 1.0
    return similar(x, y) if similar is not None else 0.0


def _common_prefix(x: str, y: str) -> str:
    import os.path

    return os.path.commonprefix([x, y])
