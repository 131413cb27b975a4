"""The embedded speech recognizer on real telephone-quality audio: espeak-ng speech, squeezed
through 8 kHz mu-law as on a call, recognised by PocketSphinx offline."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bridge.media.asr import (
    AsrError,
    AsrProvider,
    PocketsphinxAsr,
    speech_threshold,
    voiced_seconds,
)


def telephone_wav(folder: Path, text: str) -> Path:
    """``text`` spoken by espeak-ng (US English), as Asterisk would record it from a call."""
    raw = folder / "raw.wav"
    ulaw = folder / "ulaw.wav"
    out = folder / f"{text.replace(' ', '_')}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    # -D: no dither. sox dithers by default, which adds random noise: the same text would
    # give a slightly different recording, and a different hypothesis, on every run.
    subprocess.run(["sox", "-D", str(raw), "-r", "8000", "-c", "1", "-e", "mu-law", str(ulaw)],
                   check=True)
    subprocess.run(["sox", "-D", str(ulaw), "-e", "signed", "-b", "16", str(out)], check=True)
    return out


def silent_wav(path: Path) -> Path:
    subprocess.run(["sox", "-n", "-r", "8000", "-b", "16", "-c", "1", str(path),
                    "trim", "0", "1.5"], check=True)
    return path


@pytest.fixture(scope="module")
def asr() -> PocketsphinxAsr:
    return PocketsphinxAsr()


def test_is_an_asr_provider(asr):
    assert isinstance(asr, AsrProvider)
    assert asr.supports("en-US") and asr.supports("en-gb") and not asr.supports("de-DE")


async def test_free_speech_is_transcribed(asr, tmp_path):
    [best, *_] = await asr.recognize(telephone_wav(tmp_path, "one two three"), "en-US", [])
    assert best.text == "one two three"
    assert 0.0 < best.confidence <= 1.0


async def test_context_hints_find_the_menu_word(asr, tmp_path):
    results = await asr.recognize(telephone_wav(tmp_path, "operator"), "en-US",
                                  ["sales", "support", "billing", "operator"])
    assert results[0].text == "operator"
    assert results[0].confidence > 0.5
    assert [r.confidence for r in results] == sorted((r.confidence for r in results),
                                                     reverse=True)


async def test_silence_gives_no_hypothesis(asr, tmp_path):
    silent = silent_wav(tmp_path / "silence.wav")
    assert voiced_seconds(silent) == 0.0
    assert await asr.recognize(silent, "en-US", ["sales"]) == []


def test_voiced_seconds_measures_speech(tmp_path):
    wav = telephone_wav(tmp_path, "hello there")
    assert 0.3 < voiced_seconds(wav) < 2.0


async def test_unsupported_language_and_bad_audio_are_errors(asr, tmp_path):
    wav = telephone_wav(tmp_path, "hello")
    with pytest.raises(AsrError, match="de-DE"):
        await asr.recognize(wav, "de-DE", [])
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file at all")
    with pytest.raises(AsrError, match=r"junk\.wav"):
        await asr.recognize(junk, "en-US", [])


def test_sensitivity_maps_to_a_speech_level():
    assert speech_threshold(None) == speech_threshold(50)
    assert speech_threshold(0) > speech_threshold(50) > speech_threshold(100)
