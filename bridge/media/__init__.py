"""Media for NCCO ``talk`` and ``stream``: voices, TTS and the WAV store.

Everything produced is a WAV, 8 kHz, mono, 16-bit signed, which Asterisk plays
from ``{public_url}/media/{media_id}.wav`` without transcoding.
"""

from bridge.media.audio import level_to_gain_db
from bridge.media.errors import MediaError
from bridge.media.store import MediaItem, MediaStore
from bridge.media.tts import EspeakTts, TtsProvider
from bridge.media.voices import (
    DEFAULT_VOICE,
    VOICE_NAMES,
    EspeakVoice,
    Voice,
    espeak_voice,
    resolve_voice,
)

__all__ = [
    "DEFAULT_VOICE",
    "VOICE_NAMES",
    "EspeakTts",
    "EspeakVoice",
    "MediaError",
    "MediaItem",
    "MediaStore",
    "TtsProvider",
    "Voice",
    "espeak_voice",
    "level_to_gain_db",
    "resolve_voice",
]
