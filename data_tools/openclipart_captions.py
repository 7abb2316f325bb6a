"""Caption cleaning for the Debian ``openclipart-svg`` clip art (pure functions, stdlib only).

Each SVG carries a ``dc:title`` and sometimes a ``dc:description`` in its RDF metadata. They
were typed by hundreds of contributors in 2004-2006 and are noisy in predictable ways, found
by reading all 2,776 distinct titles and 708 distinct descriptions of package 1:0.18+dfsg-19:

- about half the files share a *collection* title that says nothing about the picture
  ("gramastar" on 1,375 star polygons, "Part of the Flat Icon Collection (...)" on 950
  icons, "Lemon SVG theme", "AIGA_Symbol_Signs", "card", ...). For those the file name is
  the real caption ("aiga_baggage_check_in1.svg", "lemon-theme/apps/gimp.svg"), so we build
  the caption from the file name plus a noun naming the kind of picture ("gimp icon");
- titles are often file names themselves ("padlock_unlocked_silhouette", "Aircraft3");
- descriptions hold signatures (e-mail addresses, "Created with Inkscape", license HTML,
  "HASH(0x...)" from a broken export script), attribution ("EPS converted from ..."),
  first-person notes ("Made to amuse Danielle."), or just repeat the title;
- Debian file names end with the author's name, truncated to fit 24 characters, and a
  counter: ``pansement_jean_victor_ba_.svg`` by "Jean-Victor Balin".

``clean_caption`` turns one file's metadata into a caption or ``None`` (drop the sample).
Non-English titles (Italian, French, Portuguese) are kept as they are: they still name the
object, and translating them offline is not possible.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

# CLIP's text tower sees at most 77 BPE tokens (about 300 characters of English); 200 keeps
# whole sentences with a margin and stops a long description from drowning the title.
MAX_CAPTION_CHARS = 200


@dataclass(frozen=True)
class Collection:
    """A title shared by a whole collection; ``noun`` names what its pictures are."""

    title_pattern: re.Pattern[str]
    noun: str


def _collection(pattern: str, noun: str) -> Collection:
    return Collection(re.compile(pattern, re.IGNORECASE), noun)


# Titles that name a collection, a theme, a batch or a person instead of the picture.
COLLECTION_TITLES: tuple[Collection, ...] = (
    _collection(r"^gramastar$", ""),  # star polygons; the file name holds points and step
    _collection(r"^part of the flat icon collection\b", "icon"),
    _collection(r"^lemon svg theme$", "icon"),
    _collection(r"^etiquette icons$", "icon"),
    _collection(r"^blueberry - iconset$", "icon"),
    _collection(r"^(gold|plastik)(-icon)?-theme$", "icon"),
    _collection(r"^icons$", "icon"),
    _collection(r"^aiga_symbol_signs$", "sign"),
    _collection(r"^(svg )?road signs$", "road sign"),
    _collection(r"^advertising$", "safety sign"),  # French hazard signs by one author
    _collection(r"^map symbols$", "map symbol"),
    _collection(r"^australian maps$", "map"),
    _collection(r"^card$", ""),  # playing cards; the file name holds suit and rank
    _collection(r"^svg gradient collection\b", "gradient"),
    _collection(r"^various cliparts$", ""),
    _collection(r"^homes clipart$", ""),
    _collection(r"^simple arrows$", ""),
    _collection(r"^sallite$", ""),  # misspelt "satellite": a set of network clip art
    _collection(r"^r1\d (sibmission|submission|general)$", ""),  # release-batch labels
    # "Clipart by Nicu Buculei - arrow08_4": the part after the dash was copied between
    # files and is often wrong (car.svg says "piggybank"), so trust the file name instead.
    _collection(r"^clipart by .+ - ", ""),
)

# Whole descriptions that describe the collection or the tooling, not the picture.
BOILERPLATE_DESCRIPTIONS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"^eps converted from\b",
        r"^part of .* collection\.?$",
        r"^collection of .* clip ?art$",
        r"^from at least the time of the ancient athenians\b",  # history note on 40 flags
        r"^data from\b",
        r"^contact\b",
    )
)

# Sentences about how or why the file was made; dropped wherever they appear.
META_SENTENCE = re.compile(
    r"\b(made|created?|drawn|done) (with|in|using) (the )?(inkscape|sodipodi|corel|illustrator)\b"
    r"|\binkscape\b|\bsodipodi\b|\bpublic domain\b|\bcreative commons\b|\blicen[cs]e\b"
    r"|\bfirst submission\b|\bnothing more\b|^made (to|for)\b|^for [A-Z]\w*$|\bcreated by\b|^e-?mail\b"
    r"|\bideal for printing\b|\bemail adress\b|^site web$",
    re.IGNORECASE,
)
# First-person notes ("A house I drew for lincity-ng") describe the author, not the image.
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|my|me|we|our)\b", re.IGNORECASE)
# Provenance clauses: keep what comes before them ("watermelon autotraced from own photo").
PROVENANCE_CLAUSE = re.compile(
    r"[,;]?\s*\b(auto)?(derived|derivative|edited|traced|converted|vectori[sz]ed|based)"
    r" (from|of|on|to)\b.*$",
    re.IGNORECASE | re.DOTALL,
)
# Bare domains only in lower case: "OpenOffice.org" in a sentence is a product name.
URL = re.compile(r"(?i:https?://|www\.)\S+|\b[a-z0-9-]+\.(com|org|net|de|no|es)\b/?\S*")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
HTML_TAG = re.compile(r"<[^>]*>?")
PERL_HASH = re.compile(r"HASH\(0x[0-9a-f]+\)", re.IGNORECASE)
FILE_EXTENSION_WORD = re.compile(r"\.(svg|png|jpe?g|eps)\b|\b(svg|eps)\b", re.IGNORECASE)
BLACK_AND_WHITE = re.compile(r"(?<=\()\s*b\s*(and|&)\s*w\s*(?=\))|\bb&w\b|\bbw\b", re.IGNORECASE)
# "a simple map of aragon region, enjoy it!": the map stays, the cheer goes.
ENJOY_CLAUSE = re.compile(r"[,.;]?\s*\benjoy( it)?\b[.!]*", re.IGNORECASE)
LEAD_IN = re.compile(r"^(this is|it'?s|here is|picture of|image of)\s+", re.IGNORECASE)

# Tokens in file names that name a theme, a prefix convention or a format, not the object.
FILE_NAME_JUNK_TOKENS = frozenset(
    {"aiga", "bb", "gnome", "mime", "fs", "stock", "application", "x", "plastik", "icon", "theme",
     "gradient", "symbol", "svg", "clipart", "bwh", "ganson", "r"}
)
# Numbering and size codes in file names: "01", "v14", "70a029", "1m", "10cm", "09a", "0x89c7".
NUMBERING_TOKEN = re.compile(r"^(v?\d+[a-z]{0,2}\d*|\d+[a-z]\d+|0x[0-9a-f]+)$", re.IGNORECASE)
# "disposal1", "in1", "Aircraft3" lose the counter; "AK47" and "MD5" (upper case) keep it.
GLUED_TRAILING_DIGITS = re.compile(r"\b([a-z]{2,}|[A-Za-z]{3,})\d+\b")
LEADING_ZERO_NUMBER = re.compile(r"(\s+#?0\d*|\s*#\d+)$")  # "Woman Fashion 01", "BlueMan#211"
CAMEL_BOUNDARY = re.compile(r"(?<=[a-z]{2})(?=[A-Z][a-z])")  # "RoundPointShovel", not "LyX", "eBuild"

STAR_FILE = re.compile(r"^star_(\d+)pt(\d+)step$")
CARD_FILE = re.compile(r"^(simple|white|bordered|ornamental)_(jk_[rb]|[cdhs]_(?:[2-9]|10|[ajqk]))$")
CARD_BACK_FILE = re.compile(r"^back\d+$")
CARD_STYLE = {"simple": "simple", "white": "plain white", "bordered": "bordered",
              "ornamental": "ornamental"}
CARD_SUITS = {"c": "clubs", "d": "diamonds", "h": "hearts", "s": "spades"}
CARD_RANKS = {"a": "ace", "j": "jack", "q": "queen", "k": "king"}

# A caption made only of these words (or of single letters) carries no content. Two-letter
# words count as content ("TV", "WC", "CD") except the fillers listed here.
UNINFORMATIVE_WORDS = frozenset(
    {"untitled", "image", "drawing", "picture", "clipart", "icon", "icons", "new", "test", "symbol",
     "sign", "svg", "the", "an", "of", "and", "my", "free", "mr", "ms", "oh", "no", "ex", "go", "wp"}
)


def normalize_text(text: str) -> str:
    """Unescape (twice: some files hold ``&amp;#39;``), drop markup and collapse whitespace."""
    text = html.unescape(html.unescape(text))
    text = HTML_TAG.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def _ascii_fold(word: str) -> str:
    return word.lower().translate(str.maketrans("àáâäãçèéêëìíîïñòóôöõùúûüý", "aaaaaceeeeiiiinooooouuuuy"))


def creator_tokens(creator: str) -> list[str]:
    """Lower-case ASCII words of the author's name: "Jean-Victor Balin" -> jean, victor, balin."""
    return [_ascii_fold(word) for word in re.findall(r"[^\W\d_]+", creator or "")]


def remove_creator(text: str, creator: str) -> str:
    """Remove the author's full name and any run of two or more of its words from ``text``.

    Single words are kept: a one-word author ("Tux", "Greg") may also name the picture.
    """
    name = creator_tokens(creator)
    if len(name) < 2:
        return text
    words = text.split()
    folded = [_ascii_fold(re.sub(r"[^\w]", "", word)) for word in words]
    keep = [True] * len(words)
    index = 0
    while index < len(words):
        run = index
        while run < len(words) and folded[run] in name:
            run += 1
        if run - index >= 2:
            keep[index:run] = [False] * (run - index)
            # "by Alan Horkan" / "Clipart by X": the "by" goes with the name.
            if index > 0 and folded[index - 1] == "by":
                keep[index - 1] = False
        index = max(run, index + 1)
    return " ".join(word for word, kept in zip(words, keep, strict=True) if kept)


def split_file_name_words(text: str) -> str:
    """Turn file-name style text into words: underscores, lone hyphens, CamelCase, digits."""
    text = text.replace("_", " ")
    text = GLUED_TRAILING_DIGITS.sub(r"\1", text)
    if " " not in text.strip():
        text = CAMEL_BOUNDARY.sub(" ", text)  # "RoundPointShovel" -> "Round Point Shovel"
        text = text.replace("-", " ")  # "button-yellow" is a file name, "T-shirt" has no twin
    return text


def clean_title(title: str, creator: str) -> str:
    """Clean a non-collection title; the result may be empty."""
    text = normalize_text(title)
    text = URL.sub(" ", EMAIL.sub(" ", text))
    text = FILE_EXTENSION_WORD.sub(" ", text)
    text = BLACK_AND_WHITE.sub("black and white", split_file_name_words(text))
    text = remove_creator(text, creator)
    text = text.replace(" | ", ", ")
    text = re.sub(r"\s+", " ", text).strip(" -,.:;|")
    return LEADING_ZERO_NUMBER.sub("", text).strip(" -,.:;|")


def caption_from_file_name(stem: str, creator: str, noun: str) -> str:
    """Build a caption from a file name (no extension) for pictures with a collection title."""
    star = STAR_FILE.match(stem)
    if star:
        points, step = (int(group) for group in star.groups())
        return f"star polygon with {points} points, step {step}"
    if CARD_BACK_FILE.match(stem):
        return "the back of a playing card"
    card = CARD_FILE.match(stem.lower())
    if card:
        style, face = card.groups()
        if face.startswith("jk"):
            color = "red" if face.endswith("r") else "black"
            return f"a {color} joker playing card, {CARD_STYLE[style]} design"
        suit, rank = face.split("_")
        rank_name = CARD_RANKS.get(rank, rank)
        return f"the {rank_name} of {CARD_SUITS[suit]} playing card, {CARD_STYLE[style]} design"

    words = split_file_name_words(re.sub(r"[-.]", "_", stem)).split()
    words = [word for word in words if not NUMBERING_TOKEN.match(word)]
    # Debian names end with the author's name cut to fit: "pansement_jean_victor_ba" by
    # Jean-Victor Balin. Drop the trailing words that are (prefixes of) the author's words.
    name = creator_tokens(creator)
    while words and any(part.startswith(_ascii_fold(words[-1])) for part in name):
        words.pop()
    words = [word for word in words if _ascii_fold(word) not in FILE_NAME_JUNK_TOKENS]
    if not words:
        return ""
    return BLACK_AND_WHITE.sub("black and white", " ".join(words + ([noun] if noun else [])))


def clean_description(description: str, creator: str) -> str:
    """Keep the sentences of a description that describe the picture; may return ""."""
    # A line break ends a sentence even without a full stop ("...collant.\nShape package").
    text = normalize_text(re.sub(r"([^.!?\s])[ \t]*\n", r"\1.\n", description))
    text = PERL_HASH.sub(" ", URL.sub(" ", EMAIL.sub(" ", text)))  # e-mails first: they hold domains
    text = BLACK_AND_WHITE.sub("black and white", text)
    text = ENJOY_CLAUSE.sub("", remove_creator(text, creator))
    text = re.sub(r"\s+", " ", text).strip(" -,.:;")
    if any(pattern.search(text) for pattern in BOILERPLATE_DESCRIPTIONS):
        return ""
    kept = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        before_provenance = PROVENANCE_CLAUSE.sub("", sentence)
        if before_provenance != sentence:
            # "a standard cross drawn by pen and converted to ...": keep "a standard cross drawn
            # by pen", but not a lone word ("Hand traced from calligraphy" -> "Hand").
            before_provenance = re.sub(r"\s+(and|or|with|then)$", "", before_provenance.strip(" -,.:;"))
            if len(before_provenance.split()) < 2:
                continue
        sentence = before_provenance.strip(" -,.:;")
        if not is_informative(sentence) or META_SENTENCE.search(sentence) or FIRST_PERSON.search(sentence):
            continue
        sentence = LEADING_ZERO_NUMBER.sub("", FILE_EXTENSION_WORD.sub(" ", sentence))
        kept.append(LEAD_IN.sub("", re.sub(r"\s+", " ", sentence)).strip())
    return ". ".join(sentence for sentence in kept if sentence)


def _content_words(text: str) -> set[str]:
    """Lower-case words with a plural "s" removed, for "does this repeat the title?" checks."""
    words = re.findall(r"[^\W_]+", _ascii_fold(text))
    return {word[:-1] if len(word) > 3 and word.endswith("s") else word for word in words}


def is_informative(caption: str) -> bool:
    words = _content_words(caption)
    return any(len(word) >= 2 and word not in UNINFORMATIVE_WORDS for word in words)


def truncate(text: str, limit: int = MAX_CAPTION_CHARS) -> str:
    """Cut at the last sentence end within ``limit``, else at the last word boundary."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    sentence_end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if sentence_end > limit // 2:
        return head[: sentence_end + 1]
    return head[: head.rfind(" ")].rstrip(" ,;:-")


def find_collection(title: str) -> Collection | None:
    title = normalize_text(title)
    return next((item for item in COLLECTION_TITLES if item.title_pattern.search(title)), None)


def clean_caption(title: str, description: str, file_stem: str, creator: str) -> str | None:
    """Caption for one SVG, or ``None`` when nothing informative is left.

    ``file_stem`` is the file name without ``.svg``; ``creator`` the ``dc:creator`` name.
    """
    collection = find_collection(title)
    # "Mirjam Meijer", "ralf@ark.in-berlin.de": the author typed their name as the title.
    title_is_author = _content_words(title) <= _content_words(creator) or bool(
        EMAIL.fullmatch(normalize_text(title))
    )
    if collection is not None or title_is_author:
        noun = collection.noun if collection is not None else ""
        subject = caption_from_file_name(file_stem, creator, noun)
    else:
        subject = clean_title(title, creator)
    details = clean_description(description, creator)

    subject_words, detail_words = _content_words(subject), _content_words(details)
    if not details or detail_words <= subject_words:
        caption = subject  # the description repeats the title (or is empty)
    elif subject_words <= detail_words:
        caption = details  # "mug" + "coffee mug": the description says it all
    else:
        caption = f"{subject}. {details}" if subject else details
    caption = truncate(caption.strip())
    return caption if is_informative(caption) else None
