"""Voices for the NCCO ``talk`` action and their mapping onto espeak-ng.

Two NCCO dialects describe a voice:

* the 2017 reference uses ``voiceName`` (``"Amy"``, ``"Kimberly"``, ...), each of
  which implies a language and a gender;
* the current Vonage API uses ``language`` (a BCP-47 tag such as ``"en-GB"``)
  plus ``style`` (an integer >= 0 choosing among the voices of that language).

:func:`resolve_voice` folds both into a :class:`Voice`, and :func:`espeak_voice`
turns a :class:`Voice` into the ``-v`` argument of espeak-ng.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Gender = Literal["female", "male"]


@dataclass(frozen=True)
class Voice:
    """A resolved TTS voice.

    Attributes:
        language: BCP-47 tag in canonical case, e.g. ``"en-GB"`` or ``"en-GB-WLS"``.
        gender: ``"female"``/``"male"`` when the NCCO named a 2017 voice; ``None``
            when only ``language`` was given (the current API leaves the choice to
            ``style``).
        style: Voice variant selector, an integer >= 0; 0 is the default variant.
    """

    language: str
    gender: Gender | None
    style: int


# voiceName -> (language, gender), from the 2017 NCCO reference. Keys are
# lowercase because the lookup is case-insensitive.
VOICE_NAMES: dict[str, tuple[str, Gender]] = {
    "salli": ("en-US", "female"),
    "joey": ("en-US", "male"),
    "naja": ("da-DK", "female"),
    "mads": ("da-DK", "male"),
    "marlene": ("de-DE", "female"),
    "hans": ("de-DE", "male"),
    "nicole": ("en-AU", "female"),
    "russell": ("en-AU", "male"),
    "amy": ("en-GB", "female"),
    "brian": ("en-GB", "male"),
    "emma": ("en-GB", "female"),
    "gwyneth": ("en-GB-WLS", "female"),
    # The reference also lists Geraint under cy-GB-WLS; en-GB-WLS is kept because
    # Geraint reads English text with a Welsh accent, which is what callers expect.
    "geraint": ("en-GB-WLS", "male"),
    "raveena": ("en-IN", "female"),
    "chipmunk": ("en-US", "male"),
    "eric": ("en-US", "male"),
    "ivy": ("en-US", "female"),
    "jennifer": ("en-US", "female"),
    "justin": ("en-US", "male"),
    "kendra": ("en-US", "female"),
    "kimberly": ("en-US", "female"),
    "conchita": ("es-ES", "female"),
    "enrique": ("es-ES", "male"),
    "penelope": ("es-US", "female"),
    "miguel": ("es-US", "male"),
    "chantal": ("fr-CA", "female"),
    "celine": ("fr-FR", "female"),
    "mathieu": ("fr-FR", "male"),
    "dora": ("is-IS", "female"),
    "karl": ("is-IS", "male"),
    "carla": ("it-IT", "female"),
    "giorgio": ("it-IT", "male"),
    "liv": ("nb-NO", "female"),
    "lotte": ("nl-NL", "female"),
    "ruben": ("nl-NL", "male"),
    "agnieszka": ("pl-PL", "female"),
    "jacek": ("pl-PL", "male"),
    "ewa": ("pl-PL", "female"),
    "jan": ("pl-PL", "male"),
    "maja": ("pl-PL", "female"),
    "vitoria": ("pt-BR", "female"),
    "ricardo": ("pt-BR", "male"),
    "cristiano": ("pt-PT", "male"),
    "ines": ("pt-PT", "female"),
    "carmen": ("ro-RO", "female"),
    "maxim": ("ru-RU", "male"),
    "tatyana": ("ru-RU", "female"),
    "astrid": ("sv-SE", "female"),
    "filiz": ("tr-TR", "female"),
}

# The 2017 reference states that Kimberly is used when no voice is given.
DEFAULT_VOICE_NAME = "Kimberly"
DEFAULT_VOICE = Voice(language="en-US", gender="female", style=0)

# Language subtag (2-3 letters) then up to a few 1-8 character subtags. This is a
# syntactic check only: well-formed but unknown tags are accepted and fall back to
# a related espeak-ng voice, because refusing a whole call over an accent is worse
# than speaking with a slightly wrong one.
_BCP47 = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8}){0,4}")


def canonical_language(tag: str) -> str:
    """Return ``tag`` in canonical BCP-47 case (``"EN-gb"`` -> ``"en-GB"``).

    Raises:
        ValueError: ``tag`` is not a well-formed language tag.
    """
    if not isinstance(tag, str) or not _BCP47.fullmatch(tag):
        raise ValueError(f"language {tag!r} is not a valid BCP-47 language tag")
    first, *rest = tag.split("-")
    parts = [first.lower()]
    seen_region = False
    for sub in rest:
        if sub.isalpha() and len(sub) == 2:
            parts.append(sub.upper())
            seen_region = True
        elif sub.isalpha() and len(sub) == 4:
            parts.append(sub.title())
        elif sub.isalpha() and len(sub) == 3 and seen_region:
            # Vonage's own dialect tags put a 3-letter code after the region
            # ("en-GB-WLS") and spell it upper case.
            parts.append(sub.upper())
        else:
            parts.append(sub.lower())
    return "-".join(parts)


def resolve_voice(voice_name: str | None, language: str | None, style: int | None) -> Voice:
    """Resolve the NCCO ``voiceName``/``language``/``style`` fields to a :class:`Voice`.

    Args:
        voice_name: 2017 ``voiceName`` (case-insensitive), or ``None``.
        language: current-API BCP-47 ``language``, or ``None``.
        style: current-API ``style`` (integer >= 0), or ``None`` for 0.

    Returns:
        The voice. With neither name nor language, the reference default
        (Kimberly, en-US female).

    Raises:
        ValueError: unknown ``voiceName``, malformed ``language`` or a negative or
            non-integer ``style``; the message names the field and the value.
    """
    if style is None:
        style = 0
    # bool is an int subclass; ``"style": true`` in JSON is a client bug, not 1.
    if isinstance(style, bool) or not isinstance(style, int) or style < 0:
        raise ValueError(f"style {style!r} must be an integer >= 0")

    # The current API supersedes voiceName, so when an NCCO carries both (common
    # while clients migrate) ``language`` wins and voiceName is ignored, not even
    # validated: a stale name must not break a call that is otherwise correct.
    if language is not None:
        return Voice(language=canonical_language(language), gender=None, style=style)

    if voice_name is None:
        return Voice(DEFAULT_VOICE.language, DEFAULT_VOICE.gender, style)

    entry = VOICE_NAMES.get(voice_name.lower()) if isinstance(voice_name, str) else None
    if entry is None:
        raise ValueError(f"voiceName {voice_name!r} is not a known voice")
    lang, gender = entry
    return Voice(language=lang, gender=gender, style=style)


# --- espeak-ng mapping -------------------------------------------------------

# BCP-47 tag (lowercase) -> (espeak-ng voice id, exact). ``exact`` is False where
# espeak-ng has no voice for that variety and we chose the closest one; those are
# reported as a fallback so operators know the accent is approximate. Ids were
# checked against ``espeak-ng --voices`` (1.51).
_ESPEAK_BY_TAG: dict[str, tuple[str, bool]] = {
    "en-us": ("en-us", True),
    "en-gb": ("en-gb", True),
    # Australian, Indian, Irish, NZ and South African English are non-rhotic, so
    # British English is closer than American.
    "en-au": ("en-gb", False),
    "en-in": ("en-gb", False),
    "en-ie": ("en-gb", False),
    "en-nz": ("en-gb", False),
    "en-za": ("en-gb", False),
    "en-gb-wls": ("en-gb", False),
    "en-gb-sct": ("en-gb-scotland", True),
    "cy-gb-wls": ("cy", True),
    "cy-gb": ("cy", True),
    "da-dk": ("da", True),
    "de-de": ("de", True),
    "de-at": ("de", False),
    "de-ch": ("de", False),
    "es-es": ("es", True),
    "es-us": ("es-419", True),
    "es-mx": ("es-419", True),
    "fr-fr": ("fr-fr", True),
    "fr-ca": ("fr-fr", False),
    "fr-be": ("fr-be", True),
    "fr-ch": ("fr-ch", True),
    "is-is": ("is", True),
    "it-it": ("it", True),
    "nb-no": ("nb", True),
    "no-no": ("nb", True),
    "nl-nl": ("nl", True),
    "nl-be": ("nl", False),
    "pl-pl": ("pl", True),
    "pt-br": ("pt-br", True),
    "pt-pt": ("pt", True),
    "ro-ro": ("ro", True),
    "ru-ru": ("ru", True),
    "sv-se": ("sv", True),
    "tr-tr": ("tr", True),
    # Languages of the current Vonage API that espeak-ng also speaks.
    "ar": ("ar", True),
    "bg-bg": ("bg", True),
    "ca-es": ("ca", True),
    "cmn-cn": ("cmn", True),
    "zh-cn": ("cmn", True),
    "yue-cn": ("yue", True),
    "zh-hk": ("yue", True),
    "cs-cz": ("cs", True),
    "el-gr": ("el", True),
    "et-ee": ("et", True),
    "eu-es": ("eu", True),
    "fi-fi": ("fi", True),
    "he-il": ("he", True),
    "hi-in": ("hi", True),
    "hr-hr": ("hr", True),
    "hu-hu": ("hu", True),
    "id-id": ("id", True),
    "ja-jp": ("ja", True),
    "ko-kr": ("ko", True),
    "lt-lt": ("lt", True),
    "lv-lv": ("lv", True),
    "ms-my": ("ms", True),
    "sk-sk": ("sk", True),
    "sl-si": ("sl", True),
    "sr-rs": ("sr", True),
    "uk-ua": ("uk", True),
    "vi-vn": ("vi", True),
    "bn-in": ("bn", True),
    "gu-in": ("gu", True),
    "kn-in": ("kn", True),
    "ml-in": ("ml", True),
    "mr-in": ("mr", True),
    "pa-in": ("pa", True),
    "ta-in": ("ta", True),
    "te-in": ("te", True),
    "th-th": ("th", True),
    "ur-pk": ("ur", True),
}

# Base language -> espeak-ng voice where the first table entry for that base is
# not the best default ("en-XX" should sound American like the product default;
# "pt-AO" is closer to European than Brazilian Portuguese).
_BASE_PREFERENCE: dict[str, str] = {
    "en": "en-us",
    "fr": "fr-fr",
    "pt": "pt",
    "no": "nb",
    "zh": "cmn",
}


def _espeak_for_base(base: str) -> str | None:
    """espeak-ng voice for a bare language subtag (``"de"``), or ``None``."""
    if base in _BASE_PREFERENCE:
        return _BASE_PREFERENCE[base]
    for tag, (espeak, _exact) in _ESPEAK_BY_TAG.items():
        if tag.split("-")[0] == base:
            return espeak
    return None


ESPEAK_LAST_RESORT = "en-us"

# espeak-ng voice variants. Index 0 is the default for each gender (the design's
# "+f3"/"+m3"); higher styles walk through the others. Styles beyond the list wrap
# around, so any style >= 0 is valid.
FEMALE_VARIANTS: tuple[str, ...] = ("f3", "f1", "f2", "f4", "f5")
MALE_VARIANTS: tuple[str, ...] = ("m3", "m1", "m2", "m4", "m5", "m6", "m7")
# No gender (current API): alternate so style 0 is female, like Vonage's default,
# and style 1 gives a male voice.
ANY_VARIANTS: tuple[str, ...] = (
    "f3", "m3", "f1", "m1", "f2", "m2", "f4", "m4", "f5", "m5", "m6", "m7",
)  # fmt: skip


@dataclass(frozen=True)
class EspeakVoice:
    """An espeak-ng voice selection.

    Attributes:
        voice: espeak-ng voice id, e.g. ``"en-gb"``.
        variant: espeak-ng variant, e.g. ``"f3"``.
        fallback: ``None`` when ``voice`` matches the requested language; otherwise
            a sentence saying what was substituted (for logs).
    """

    voice: str
    variant: str
    fallback: str | None = None

    @property
    def arg(self) -> str:
        """The value for ``espeak-ng -v``, e.g. ``"en-gb+f3"``."""
        return f"{self.voice}+{self.variant}"


def espeak_voice(voice: Voice) -> EspeakVoice:
    """Map a :class:`Voice` onto an espeak-ng voice and variant.

    Lookup order: the full language tag, then its base language, then en-us; the
    last two (and the "closest variety" entries of the table) set ``fallback``.
    """
    tag = voice.language.lower()
    fallback: str | None = None
    exact = _ESPEAK_BY_TAG.get(tag)
    if exact is not None:
        espeak, is_exact = exact
        if not is_exact:
            fallback = f"no espeak-ng voice for {voice.language}; using closest {espeak}"
    else:
        base = tag.split("-")[0]
        by_base = _espeak_for_base(base)
        if by_base is not None:
            espeak = by_base
            if tag != base:
                # A bare "de" is fully served by "de"; only "de-LU" is a fallback.
                fallback = f"no espeak-ng voice for {voice.language}; using base language {espeak}"
        else:
            espeak = ESPEAK_LAST_RESORT
            fallback = f"no espeak-ng voice for {voice.language}; using {espeak}"

    variants = {
        "female": FEMALE_VARIANTS,
        "male": MALE_VARIANTS,
        None: ANY_VARIANTS,
    }[voice.gender]
    return EspeakVoice(espeak, variants[voice.style % len(variants)], fallback)


def espeak_voice_ids() -> frozenset[str]:
    """All espeak-ng voice ids this module can choose (for availability checks)."""
    return frozenset(
        {v for v, _ in _ESPEAK_BY_TAG.values()}
        | set(_BASE_PREFERENCE.values())
        | {ESPEAK_LAST_RESORT}
    )
