"""The "titles-disagree" same-product check: the shared catalog's own same-product groups, with
every member's title rewritten by a different seller-style rule, so that the photo has to carry
the match (no new data).

Why: every same-product group of the shared catalog (``same_product_groups.csv`` -> canonical
``group_id``) shares one identical title *and* a near-identical photo (equal 64-bit difference
hash, mean 8 x 8 RGB difference below 6; the catalog's README), so plain same-product search never
measures the case real marketplaces are full of: one product listed by different sellers under
different titles. The sibling check :mod:`item_model.title_decides` covers the opposite case
(identical title, photo misleads). This module builds the titles-disagree case from the catalog:

* every member of a real same-product group (``group_id`` not null) gets
  :func:`rewrite_title` of its own title with ``variant`` = its 0-based rank inside its group by
  ``product_id``, so the members of one group carry *different* rewritten titles (the brand
  dropped or abbreviated, words reordered, colour words swapped for synonyms, seller noise such as
  "NEW" or "(Pack of 1)" added); every listing outside a group keeps its original title (the
  distractors);
* queries: every group member, under its rewritten title and with its own photo; gallery: the
  whole evaluated catalog (the query itself excluded), where the other members of its group also
  carry different rewritten titles and the distractors keep their original titles; relevance =
  same canonical ``group_id``; metrics Recall@1, Recall@10, mAP
  (:func:`item_model.metrics.retrieval_details`), as :data:`METRIC_KEYS`.

What it measures: whether the joint vector lets the photo carry the match when the titles
disagree. A title-only model is hurt by the rewrites (the member's title now shares fewer words
with its group than with distractors of the same brand, colour and category); a photo-only model
is not hurt at all (photos are untouched, and the photos of the shared catalog's groups are
near-duplicates by construction, so a pixel baseline stays near its plain Recall@1 of ~0.94).
A joint embedding that scores well here and on :mod:`item_model.title_decides` uses each modality
when it is the informative one.

Variant k plays "seller k": the same rules (the same noise, the same word order) apply to the
k-th member of every group, so a seller's wording is shared across products, as on a real
marketplace, and does not mark a group. On the full shared catalog (496 groups, 1,100 queries)
the token Jaccard similarity of a member's original and rewritten title averages 0.34, and of two
rewritten members of one group 0.41 (1.0 before the rewrite); :func:`describe` reports these.

Limits: the rewrites are rule-based (:func:`rewrite_title`), not titles written by real sellers:
real titles disagree in more ways (typos, other languages, missing or extra attributes, other
category words) and some rules here are mechanical (a 3-letter brand code, the last word moved to
the front). Synonyms come from a small fixed table and a few of them are colours of their own in
the catalog (black -> charcoal, red -> maroon), as with real sellers. Because the photos of the
groups are near-duplicates, the check says nothing about photos that differ (another shot, another
colour); it isolates the title side only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from .metrics import group_search_metrics
from .title_decides import normalise_title

logger = logging.getLogger(__name__)

#: metric keys added to each model's metrics in eval.json
METRIC_KEYS = ("titles_disagree_recall@1", "titles_disagree_recall@10", "titles_disagree_mAP",
               "titles_disagree_n_queries")

#: gender words that end the brand (compared lower-cased, a trailing possessive "'s" removed)
GENDER_WORDS = frozenset({"men", "women", "boys", "girls", "unisex", "kids", "boy", "girl", "kid"})

#: colour word or phrase (lower case) -> seller synonyms; phrases are matched before single words.
#: Keys are the colour words that occur in the catalog's titles (``baseColour`` values and their words).
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "navy blue": ("midnight blue", "deep navy"),
    "off white": ("ivory", "cream white"),
    "grey melange": ("heather grey", "marl grey"),
    "turquoise blue": ("aqua", "sky teal"),
    "sea green": ("aqua green", "mint"),
    "coffee brown": ("mocha", "espresso"),
    "lime green": ("neon green", "lime"),
    "black": ("jet black", "charcoal"),
    "white": ("ivory", "off-white"),
    "blue": ("azure", "navy"),
    "navy": ("midnight", "dark blue"),
    "red": ("crimson", "maroon"),
    "green": ("olive", "emerald"),
    "grey": ("ash", "slate"),
    "gray": ("ash", "slate"),
    "pink": ("rose", "blush"),
    "yellow": ("mustard", "lemon"),
    "brown": ("tan", "coffee"),
    "silver": ("metallic", "chrome"),
    "gold": ("golden", "gilded"),
    "golden": ("gold-tone", "gilded"),
    "purple": ("violet", "plum"),
    "orange": ("rust", "tangerine"),
    "beige": ("cream", "sand"),
    "maroon": ("burgundy", "wine"),
    "cream": ("off-white", "ivory"),
    "olive": ("khaki green", "army green"),
    "multi": ("multicolour", "multi-colour"),
    "peach": ("apricot", "salmon"),
    "khaki": ("sand", "stone"),
    "teal": ("turquoise", "petrol"),
    "lavender": ("lilac", "light purple"),
    "magenta": ("fuchsia", "hot pink"),
    "charcoal": ("dark grey", "graphite"),
    "steel": ("silver-tone", "gunmetal"),
    "mustard": ("ochre", "dark yellow"),
    "rust": ("burnt orange", "copper red"),
    "burgundy": ("wine", "oxblood"),
    "tan": ("camel", "light brown"),
    "bronze": ("antique gold", "brass"),
    "copper": ("rose gold", "bronze-tone"),
    "turquoise": ("aqua", "teal"),
    "mauve": ("dusty pink", "lilac"),
    "rose": ("pink", "blush"),
    "nude": ("skin-tone", "beige"),
    "skin": ("nude", "beige"),
    "indigo": ("deep blue", "ink blue"),
}

#: seller noise, one per variant (cycled), with where it goes: ``True`` = in front, ``False`` = at the end.
#: Variants 0..len-1 get pairwise different noise, so they give pairwise different strings.
SELLER_NOISE: tuple[tuple[str, bool], ...] = (
    ("NEW", True), ("100% Original", False), ("Free Shipping", False), ("Sale", True),
    ("(Pack of 1)", False), ("Size M", False), ("Best Price", True), ("Hot Deal", True),
)

_POSSESSIVE = re.compile(r"['\u2019]s$")


def _is_gender(token: str) -> bool:
    return _POSSESSIVE.sub("", token.lower()) in GENDER_WORDS


def split_brand(tokens: list[str]) -> tuple[list[str], list[str]]:
    """``(brand tokens, rest)`` of a title's tokens: the brand is every token before the first
    gender word (:data:`GENDER_WORDS`, so ``["Puma", "Men", ...]`` -> ``(["Puma"], ["Men", ...])``);
    with no gender word, the first token; empty when the title starts with a gender word or has a
    single token (a rewrite never removes the whole title)."""
    for i, tok in enumerate(tokens):
        if _is_gender(tok):
            return tokens[:i], tokens[i:]
    if len(tokens) < 2:
        return [], tokens
    return tokens[:1], tokens[1:]


def abbreviate_brand(brand: list[str]) -> str:
    """The brand code used by :func:`rewrite_title`: the first three letters/digits of the brand
    (spaces and punctuation removed), upper-cased: ``"Puma"`` -> ``"PUM"``, ``"Gini and Jony"`` ->
    ``"GIN"``, ``"U.S. Polo Assn."`` -> ``"USP"``; ``""`` when the brand has no letter or digit."""
    return "".join(ch for ch in "".join(brand) if ch.isalnum())[:3].upper()


def _match_case(synonym: str, original: str) -> str:
    if original[:1].isupper():
        return " ".join(w[:1].upper() + w[1:] for w in synonym.split(" "))
    return synonym


def swap_colours(tokens: list[str], pick: int, colour: str | None = None) -> tuple[list[str], int]:
    """Replace the colour words of ``tokens`` by synonyms from :data:`COLOUR_SYNONYMS` (synonym
    ``pick % len``; two-word phrases such as "Navy Blue" before single words, case-insensitive, a
    capitalised word gives a capitalised synonym). ``colour`` (the listing's catalog colour, e.g.
    ``"Navy Blue"``) is swapped as one phrase when the title holds it, with the synonyms of the
    phrase or, when the phrase has none, of its last word. Returns (new tokens, number of swaps)."""
    table = dict(COLOUR_SYNONYMS)
    if isinstance(colour, str) and colour.strip():
        key = " ".join(colour.lower().split())
        if key not in table and key.split()[-1] in table:
            table[key] = table[key.split()[-1]]
    phrase_lens = sorted({len(k.split()) for k in table}, reverse=True)
    out: list[str] = []
    swaps, i = 0, 0
    while i < len(tokens):
        for n in phrase_lens:
            key = " ".join(t.lower() for t in tokens[i:i + n])
            if i + n <= len(tokens) and key in table:
                syns = table[key]
                out.append(_match_case(syns[pick % len(syns)], tokens[i]))
                swaps += 1
                i += n
                break
        else:
            out.append(tokens[i])
            i += 1
    return " ".join(out).split(), swaps


def _reorder(tokens: list[str], mode: int) -> list[str]:
    """mode 0: the last word (the product noun in most catalog titles: Shirt, T-shirt, Shoes) to the
    front; mode 1: the gender words to the end as "for <gender>" (rotate by one when there is none);
    mode 2: rotate left by one (the first word to the end)."""
    if len(tokens) < 2:
        return list(tokens)
    if mode == 0:
        return tokens[-1:] + tokens[:-1]
    if mode == 1:
        idx = [i for i, t in enumerate(tokens) if _is_gender(t)]
        if idx:
            first = idx[0]
            last = first
            while last + 1 < len(tokens) and _is_gender(tokens[last + 1]):
                last += 1
            gender = [_POSSESSIVE.sub("", t) for t in tokens[first:last + 1]]
            rest = tokens[:first] + tokens[last + 1:]
            if rest:
                return rest + ["for"] + gender
    return tokens[1:] + tokens[:1]


def rewrite_title(title: str, variant: int, colour: str | None = None) -> str:
    """A deterministic seller-style rewrite of one catalog title (no randomness: the same inputs
    always give the same string).

    Four rules, combined per ``variant`` (v >= 0):

    1. brand (:func:`split_brand`): dropped when v is even, replaced by its 3-letter code
       (:func:`abbreviate_brand`, "Puma" -> "PUM") when v is odd;
    2. word order (of what remains): v % 3 == 0 the last word (the product noun) to the front,
       1 the gender words to the end as "for Men", 2 rotated left by one;
    3. colour words swapped for synonyms (:func:`swap_colours`, synonym ``v // 2``);
    4. seller noise :data:`SELLER_NOISE` ``[v % 8]`` added in front or at the end ("NEW ...",
       "... (Pack of 1)"); from v = 8 on, a "Lot k" tag (k = v // 8 + 1) is added too.

    Every title gets noise, so every variant differs from the input, and variants 0..7 of one title
    differ from each other (different noise); the result never equals the input, even after
    :func:`item_model.title_decides.normalise_title` (a "Seller Listing" tag is added in the
    unlikely case it would).

    Examples: ``rewrite_title("Puma Men Black Sports Shoes", 0)`` ->
    ``"NEW Shoes Men Jet Black Sports"``; variant 1 -> ``"PUM Jet Black Sports Shoes for Men 100% Original"``.

    Args:
        title: the listing title (str, not blank).
        variant: which rewrite (int >= 0): inside a group, the member's rank.
        colour: the listing's catalog colour (``colour`` column, e.g. "Navy Blue"), or None: a
            multi-word colour in the title is then swapped as one phrase.

    Returns:
        the rewritten title, a non-empty str with single spaces.

    Raises:
        ValueError: ``title`` is not a str or is blank, or ``variant`` is negative or not an int.
    """
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"rewrite_title needs a non-blank title, got {title!r}")
    if isinstance(variant, bool) or not isinstance(variant, (int, np.integer)) or variant < 0:
        raise ValueError(f"rewrite_title needs an int variant >= 0, got {variant!r}")
    v = int(variant)
    tokens = title.split()
    brand, rest = split_brand(tokens)
    rest = _reorder(rest, v % 3)
    rest, _ = swap_colours(rest, v // 2, colour)
    if v % 2 == 1 and brand and abbreviate_brand(brand):
        rest = [abbreviate_brand(brand)] + rest
    noise, in_front = SELLER_NOISE[v % len(SELLER_NOISE)]
    words = [noise] + rest if in_front else rest + [noise]
    if v >= len(SELLER_NOISE):
        words += ["Lot", str(v // len(SELLER_NOISE) + 1)]
    out = " ".join(" ".join(words).split())
    if normalise_title(out) == normalise_title(title):
        out += " Seller Listing"
    return out


def _member_rank(df: pd.DataFrame, member: np.ndarray) -> np.ndarray:
    """0-based rank of each member inside its group by product_id (numeric when every member id is
    an integer string, else as strings)."""
    ids = df["product_id"].astype(str).to_numpy()[member]
    numeric = all(re.fullmatch(r"-?\d+", s) for s in ids)
    key = pd.Series([int(s) for s in ids] if numeric else list(ids), dtype=object if not numeric else "int64")
    frame = pd.DataFrame({"g": df["group_id"].to_numpy()[member].astype(np.int64), "key": key.to_numpy(),
                          "pos": np.arange(len(ids))})
    frame = frame.sort_values(["g", "key", "pos"], kind="stable")
    frame["rank"] = frame.groupby("g").cumcount()
    return frame.sort_values("pos")["rank"].to_numpy(dtype=np.int64)


def titles_disagree_catalog(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The titles-disagree catalog (see the module docstring): a copy of ``df`` whose same-product
    group members carry rewritten, pairwise different titles.

    Args:
        df: canonical catalog (:mod:`components.catalog`): ``product_id`` (str), ``title``
            (str), ``group_id`` (Int64 / float, null for listings in no group); ``colour`` is used
            when present. Other columns are copied as they are.

    Returns:
        (rewritten: a copy of ``df`` (same index, same columns) where the ``title`` of every group
        member is :func:`rewrite_title` (title, variant = its 0-based rank inside its group by
        ``product_id``, numeric when the ids are integers, colour) and every other row is
        untouched; groups: (len(df),) int64, the canonical ``group_id`` with -1 for no group).
        Inside each group the rewritten titles are pairwise different (compared after
        :func:`item_model.title_decides.normalise_title`) and each differs from its original.

    Raises:
        KeyError: ``product_id``, ``title`` or ``group_id`` is missing.
        ValueError: a group member's title is null or blank.
        RuntimeError: two members of one group still share a title (cannot happen with the rules
            of :func:`rewrite_title` for groups of up to 8 members; checked, not assumed).
    """
    for col in ("product_id", "title", "group_id"):
        if col not in df.columns:
            raise KeyError(f"titles_disagree_catalog needs column {col!r}")
    groups = df["group_id"].fillna(-1).astype("int64").to_numpy()
    out = df.copy()
    member = np.flatnonzero(groups >= 0)
    if len(member) == 0:
        return out, groups
    titles = df["title"].to_numpy(dtype=object)
    bad = [i for i in member if normalise_title(titles[i]) is None]
    if bad:
        ids = df["product_id"].to_numpy()[bad[:5]].tolist()
        raise ValueError(f"same-product group members {ids} have no title; quarantine them first")
    colours = (df["colour"].to_numpy(dtype=object) if "colour" in df.columns
               else np.full(len(df), None, dtype=object))
    ranks = _member_rank(df, member)
    new = [rewrite_title(titles[i], int(r), colours[i] if isinstance(colours[i], str) else None)
           for i, r in zip(member, ranks)]
    # distinct inside every group (checked, with a variant tag added to any later duplicate)
    seen: dict[tuple[int, str], int] = {}
    for j, (i, r) in enumerate(zip(member, ranks)):
        key = (int(groups[i]), normalise_title(new[j]))
        if key in seen:
            new[j] = f"{new[j]} Seller {int(r) + 1}"
            key = (int(groups[i]), normalise_title(new[j]))
            if key in seen:
                raise RuntimeError(f"group {groups[i]}: two members share the rewritten title {new[j]!r}")
        seen[key] = j
    col = out.columns.get_loc("title")
    out.iloc[member, col] = new
    logger.info("titles-disagree catalog: %d titles of %d groups rewritten, %d distractors untouched",
                len(member), len(np.unique(groups[member])), len(df) - len(member))
    return out, groups


def titles_disagree_metrics(emb: np.ndarray, groups: np.ndarray) -> tuple[dict[str, float], dict | None]:
    """Titles-disagree same-product search of one embedding of the rewritten catalog.

    Every group member queries the whole catalog (itself excluded); relevant = same group.

    Args:
        emb: (n, D) float32 rows aligned with the rewritten catalog of :func:`titles_disagree_catalog`
            (the model's embedding of the rewritten titles with the untouched photos).
        groups: (n,) int64 from :func:`titles_disagree_catalog` (-1 = no group).

    Returns:
        (``{"titles_disagree_recall@1", "titles_disagree_recall@10", "titles_disagree_mAP",
        "titles_disagree_n_queries"}``, per-query details of
        :func:`item_model.metrics.retrieval_details`), or ``({}, None)`` when no listing is in a group.

    Raises:
        ValueError: shapes disagree, or a group has a single member
            (:func:`item_model.metrics.retrieval_ranks`).
    """
    return group_search_metrics(emb, groups, "titles_disagree")


def _jaccard(a: object, b: object) -> float:
    sa, sb = set((normalise_title(a) or "").split()), set((normalise_title(b) or "").split())
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def describe(df: pd.DataFrame, rewritten: pd.DataFrame, n_examples: int = 3) -> dict:
    """How much the rewrites change the titles, for eval.json and reports.

    Args:
        df: the canonical catalog. rewritten: its rewrite from :func:`titles_disagree_catalog`
            (same rows in the same order).
        n_examples: how many example groups (the first groups by group id).

    Returns:
        ``{"n_groups", "n_queries", "share_changed"`` (share of group members whose rewritten title
        differs from the original after normalisation; 1.0 by construction),
        ``"mean_jaccard_original_rewritten"`` (mean token Jaccard of each member's original and
        rewritten title, lower-cased tokens), ``"mean_pairwise_jaccard_original"`` (mean over the
        pairs of members of one group, original titles: 1.0 on the shared catalog),
        ``"mean_pairwise_jaccard_rewritten"`` (the same on the rewritten titles),
        ``"examples": [{"group_id", "original", "rewrites": [...]}]}``; zeros and no example when
        no listing is in a group.

    Raises:
        ValueError: the two frames have different lengths.
    """
    if len(df) != len(rewritten):
        raise ValueError(f"describe needs aligned frames, got {len(df)} and {len(rewritten)} rows")
    groups = df["group_id"].fillna(-1).astype("int64").to_numpy()
    member = np.flatnonzero(groups >= 0)
    orig = df["title"].to_numpy(dtype=object)
    new = rewritten["title"].to_numpy(dtype=object)
    gids = np.unique(groups[member])
    out: dict = {"n_groups": int(len(gids)), "n_queries": int(len(member)), "share_changed": 0.0,
                 "mean_jaccard_original_rewritten": 0.0, "mean_pairwise_jaccard_original": 0.0,
                 "mean_pairwise_jaccard_rewritten": 0.0, "examples": []}
    if len(member) == 0:
        return out
    out["share_changed"] = float(np.mean([normalise_title(orig[i]) != normalise_title(new[i]) for i in member]))
    out["mean_jaccard_original_rewritten"] = float(np.mean([_jaccard(orig[i], new[i]) for i in member]))
    pair_orig, pair_new = [], []
    for g in gids:
        rows = np.flatnonzero(groups == g)
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                pair_orig.append(_jaccard(orig[rows[a]], orig[rows[b]]))
                pair_new.append(_jaccard(new[rows[a]], new[rows[b]]))
    if pair_orig:
        out["mean_pairwise_jaccard_original"] = float(np.mean(pair_orig))
        out["mean_pairwise_jaccard_rewritten"] = float(np.mean(pair_new))
    for g in gids[:n_examples]:
        rows = np.flatnonzero(groups == g)
        out["examples"].append({"group_id": int(g), "original": str(orig[rows[0]]),
                                "rewrites": [str(new[i]) for i in rows]})
    return out


def score_titles_disagree(df: pd.DataFrame, embeddings: dict[str, np.ndarray],
                          reembed: dict[str, Callable[[pd.DataFrame], np.ndarray]]
                          ) -> tuple[dict[str, dict[str, float]], dict[str, dict], dict]:
    """Score several embeddings of one catalog on the titles-disagree search.

    Only the group members' titles change (the distractors keep theirs), so each model re-embeds
    just those rows: the rewritten catalog's embedding of a model is its original embedding with
    the members' rows replaced by ``reembed[name](rewritten members)``. A model absent from
    ``reembed`` does not read titles (a photo-only embedding) and is scored on its original rows.

    Args:
        df: canonical catalog (``product_id``, ``title``, ``group_id``; ``colour`` when present).
        embeddings: ``{name: (n, D) float32}`` each model's L2-normalised rows of ``df``.
        reembed: ``{name: f(rows) -> (len(rows), D) float32}`` for the models that read titles.

    Returns:
        (``{name: {METRIC_KEYS...}}``, ``{name: per-query details}`` (``retrieval_details``),
        :func:`describe` of the rewrites); three empty results when ``df`` has no group.

    Raises:
        ValueError: a re-embedding has the wrong number of rows.
    """
    rewritten, groups = titles_disagree_catalog(df)
    members = np.flatnonzero(groups >= 0)
    if len(members) == 0:
        return {}, {}, {}
    rows = rewritten.iloc[members]
    metrics, details = {}, {}
    for name, emb in embeddings.items():
        if name in reembed:
            new = np.asarray(reembed[name](rows), dtype=np.float32)
            if new.shape != (len(members), emb.shape[1]):
                raise ValueError(f"{name}: re-embedding gave {new.shape}, expected {(len(members), emb.shape[1])}")
            emb = emb.copy()
            emb[members] = new
        metrics[name], details[name] = titles_disagree_metrics(emb, groups)
    return metrics, details, describe(df, rewritten)
