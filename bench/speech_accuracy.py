"""Word accuracy of the embedded speech recogniser on synthetic telephone speech.

Fifty fixed phrases in three categories (digits, short menu keywords, free sentences) are
spoken by espeak-ng with a rotating set of voices and speeds, brought to what a call carries
(8 kHz, white noise at a fixed level, mu-law and back), and recognised by
``bridge.media.asr.PocketsphinxAsr`` twice: without ``context`` and with the hints an
application would give for that kind of question. The best hypothesis (the first one, as the
``input`` event lists them) is compared with the phrase; the script prints word accuracy
(1 - word error rate) and the share of phrases recognised exactly, per category, as JSON.

Every step is deterministic: espeak-ng is, sox runs with ``-R`` (fixed seed for its noise)
and ``-D`` (no dither), and the decoder starts each utterance from the same state. Two runs
give the same figures. Recognition is CPU-bound: about 150 decodes, a few minutes of one core.

    .venv/bin/python bench/speech_accuracy.py --details /var/tmp/speech_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.media.asr import PocketsphinxAsr

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
KEYWORDS = ["operator", "sales", "support", "billing", "yes", "no", "agent", "help", "cancel",
            "repeat", "account", "payment", "balance", "english", "spanish"]

#: (category, phrase). Fixed: changing it changes every figure in docs/speech.md.
PHRASES: list[tuple[str, str]] = [
    ("digits", "one two three"), ("digits", "four five six"), ("digits", "seven eight nine"),
    ("digits", "zero"), ("digits", "one"), ("digits", "five"), ("digits", "nine"),
    ("digits", "two zero four"), ("digits", "eight one"), ("digits", "three three"),
    ("digits", "six"), ("digits", "seven"), ("digits", "four two"),
    ("digits", "nine eight seven six"), ("digits", "two"),
    ("keywords", "operator"), ("keywords", "sales"), ("keywords", "support"),
    ("keywords", "billing"), ("keywords", "yes"), ("keywords", "no"), ("keywords", "agent"),
    ("keywords", "help"), ("keywords", "cancel"), ("keywords", "repeat"),
    ("keywords", "account"), ("keywords", "payment"), ("keywords", "balance"),
    ("keywords", "english"), ("keywords", "spanish"), ("keywords", "yes please"),
    ("keywords", "no thanks"), ("keywords", "technical support"),
    ("keywords", "customer service"), ("keywords", "main menu"),
    ("sentences", "i want to talk to sales"), ("sentences", "i would like to pay my bill"),
    ("sentences", "please connect me to an operator"),
    ("sentences", "what is my account balance"), ("sentences", "i need help with my order"),
    ("sentences", "can you repeat that please"), ("sentences", "my phone is not working"),
    ("sentences", "i want to cancel my subscription"),
    ("sentences", "the weather is nice today"), ("sentences", "call me back tomorrow morning"),
    ("sentences", "where is my package"), ("sentences", "i lost my credit card"),
    ("sentences", "speak to a person please"), ("sentences", "check the status of my order"),
    ("sentences", "thank you goodbye"),
]

#: The ``context`` an application would give for each kind of question.
CONTEXT: dict[str, list[str]] = {
    "digits": DIGIT_WORDS,
    "keywords": [*KEYWORDS, "please", "thanks", "technical", "customer", "service", "main",
                 "menu"],
    "sentences": [*KEYWORDS, "bill", "pay", "order", "card", "package", "phone", "person",
                  "subscription", "status", "credit", "lost", "working"],
}

#: espeak-ng voices and speeds (words per minute), taken in turn phrase by phrase.
VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb-x-rp"]
SPEEDS = [130, 160, 190]
#: White noise added to every utterance, as a peak amplitude of full scale (sox ``vol``):
#: 0.02 gives -47 dBFS RMS, about 26 dB below espeak-ng's speech (RMS over the utterance).
NOISE_VOLUME = 0.02
PAD_S = 0.3


@dataclass
class Utterance:
    category: str
    text: str
    voice: str
    speed: int
    wav: Path


def synthesize(folder: Path, index: int, category: str, text: str,
               noise_volume: float = NOISE_VOLUME) -> Utterance:
    """``text`` spoken, noised and passed through mu-law, as Asterisk would record it."""
    voice = VOICES[index % len(VOICES)]
    speed = SPEEDS[index % len(SPEEDS)]
    raw, narrow, noise, mixed, out = (folder / f"{index:02d}-{n}.wav"
                                      for n in ("raw", "8k", "noise", "mix", "call"))
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
                   check=True)
    # -R: sox seeds its random generators with a fixed number; -D: no dither.
    subprocess.run(["sox", "-R", "-D", str(raw), "-r", "8000", "-c", "1", "-b", "16",
                    str(narrow), "pad", str(PAD_S), str(PAD_S)], check=True)
    length = subprocess.run(["soxi", "-D", str(narrow)], check=True, capture_output=True,
                            text=True).stdout.strip()
    subprocess.run(["sox", "-R", "-D", "-n", "-r", "8000", "-c", "1", "-b", "16", str(noise),
                    "synth", length, "whitenoise", "vol", str(noise_volume)], check=True)
    subprocess.run(["sox", "-R", "-D", "-m", "-v", "1", str(narrow), "-v", "1", str(noise),
                    "-e", "mu-law", str(mixed)], check=True)
    subprocess.run(["sox", "-R", "-D", str(mixed), "-e", "signed", "-b", "16", str(out)],
                   check=True)
    return Utterance(category, text, voice, speed, out)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words: substitutions + deletions + insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def summarise(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Word accuracy and exact phrases of the best hypothesis (``key``); for the decodes with
    hints also how often the phrase was any of the results, which is what an application
    that looks for its menu words among all results gets."""
    ref_words = sum(len(words(r["text"])) for r in rows)
    errors = sum(word_errors(words(r["text"]), words(r[key])) for r in rows)
    exact = sum(words(r["text"]) == words(r[key]) for r in rows)
    out = {"word_accuracy": round(1 - errors / ref_words, 3),
           "exact_phrases": round(exact / len(rows), 3)}
    if key == "context":
        anywhere = sum(any(words(r["text"]) == words(h[0]) for h in r["context_all"])
                       for r in rows)
        out["exact_in_any_result"] = round(anywhere / len(rows), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", type=Path, help="write every phrase's result here (JSON)")
    parser.add_argument("--noise-volume", type=float, default=NOISE_VOLUME,
                        help="white noise peak amplitude, of full scale (0 for none)")
    args = parser.parse_args()
    asr = PocketsphinxAsr()
    load_before = os.getloadavg()
    started = time.monotonic()
    cpu_started = time.process_time()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="speech-accuracy-") as tmp:
        for index, (category, text) in enumerate(PHRASES):
            utt = synthesize(Path(tmp), index, category, text, args.noise_volume)
            plain = asr.recognize_sync(utt.wav, [])
            hinted = asr.recognize_sync(utt.wav, CONTEXT[category])
            rows.append({"category": category, "text": text, "voice": utt.voice,
                         "speed": utt.speed,
                         "no_context": plain[0].text if plain else "",
                         "context": hinted[0].text if hinted else "",
                         "context_all": [[h.text, h.confidence] for h in hinted]})
            print(f"{index + 1}/{len(PHRASES)} {text!r}: {rows[-1]['no_context']!r}, "
                  f"{rows[-1]['context']!r}", file=sys.stderr, flush=True)
    categories: dict[str, object] = {}
    for category in ("digits", "keywords", "sentences"):
        mine = [r for r in rows if r["category"] == category]
        categories[category] = {
            "phrases": len(mine),
            "words": sum(len(words(str(r["text"]))) for r in mine),
            "no_context": summarise(mine, "no_context"),
            "context": summarise(mine, "context"),
        }
    by_voice: dict[str, object] = {}
    for voice in VOICES:
        mine = [r for r in rows if r["voice"] == voice]
        by_voice[voice] = {"phrases": len(mine), "no_context": summarise(mine, "no_context"),
                           "context": summarise(mine, "context")}
    report = {
        "categories": categories,
        "by_voice": by_voice,
        "noise_volume": args.noise_volume,
        "decode_cpu_s": round(time.process_time() - cpu_started, 1),
        "wall_s": round(time.monotonic() - started, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))
    if args.details:
        args.details.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
