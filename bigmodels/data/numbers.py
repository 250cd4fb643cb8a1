"""An embedded parallel corpus: whole numbers written out in English and in German.

"three hundred twenty-one" -> "dreihunderteinundzwanzig". German writes a number below a million as one
word and says the units before the tens ("one-and-twenty"), so a model must reorder and merge, not copy
word by word: a small real translation task that needs no download (``bigmodels compare`` trains the
encoder-decoder family on it).

    >>> english(1_021), german(1_021)
    ('one thousand twenty-one', 'eintausendeinundzwanzig')
    >>> german(101_001)
    'einhunderteintausendeins'
"""

from __future__ import annotations

import random

from ..errors import ConfigError

__all__ = ["english", "german", "number_pairs", "MAX_NUMBER", "SPLITS"]

MAX_NUMBER = 999_999  # German spells everything below a million as one word
SPLITS = {"train": 20_000, "val": 1_000, "test": 1_000}  # the data set `numbers`: disjoint draws

_EN_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
             "sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_DE_SMALL = ("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn "
             "sechzehn siebzehn achtzehn neunzehn").split()
_DE_TENS = "_ _ zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()


def _check(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NUMBER:
        raise ConfigError(f"number {n!r} is outside 0..{MAX_NUMBER:,}; the corpus spells whole numbers in that range")


def english(n: int) -> str:
    """American English without "and": 1,234 -> "one thousand two hundred thirty-four"."""
    _check(n)

    def below_1000(m: int) -> list[str]:
        words = [_EN_SMALL[m // 100], "hundred"] if m >= 100 else []
        m %= 100
        if m >= 20:
            words.append(_EN_TENS[m // 10] + (f"-{_EN_SMALL[m % 10]}" if m % 10 else ""))
        elif m:
            words.append(_EN_SMALL[m])
        return words

    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = [*below_1000(thousands), "thousand"] if thousands else []
    return " ".join(words + below_1000(rest))


def german(n: int) -> str:
    """One word, units before tens (Duden): 21 -> "einundzwanzig", 1,001 -> "eintausendeins"."""
    _check(n)

    def below_1000(m: int, final: bool) -> str:
        """``final``: the number's last word, where 1 is "eins"; inside a compound it is "ein"."""
        hundreds, m = divmod(m, 100)
        word = f"{_DE_SMALL[hundreds] if hundreds > 1 else 'ein'}hundert" if hundreds else ""
        if m == 1:
            return word + ("eins" if final else "ein")
        if m >= 20 and m % 10:
            unit = "ein" if m % 10 == 1 else _DE_SMALL[m % 10]
            return word + f"{unit}und{_DE_TENS[m // 10]}"
        if m >= 20:
            return word + _DE_TENS[m // 10]
        return word + (_DE_SMALL[m] if m else "")

    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    head = below_1000(thousands, final=False) + "tausend" if thousands else ""
    return head + (below_1000(rest, final=True) if rest else "")


def number_pairs(sizes: dict[str, int], seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Disjoint random splits of (English, German) pairs: ``sizes`` maps split name -> count.

    >>> splits = number_pairs({"train": 3, "val": 1})
    >>> [len(v) for v in splits.values()]
    [3, 1]
    """
    total = sum(sizes.values())
    if any(n < 1 for n in sizes.values()) or total > MAX_NUMBER + 1:
        raise ConfigError(f"split sizes {sizes} must be positive and add up to at most {MAX_NUMBER + 1:,}")
    numbers = random.Random(seed).sample(range(MAX_NUMBER + 1), total)
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = [(english(k), german(k)) for k in numbers[start:start + n]]
        start += n
    return out
