"""Offline keyword speech: a Speech Commands-style corpus from the bundled espeak-ng engine.

espeak-ng (a formant synthesiser, from the PyPI package ``espeakng-loader``) is driven through
ctypes. A synthetic *speaker* is an English accent, a voice variant, a pitch, pitch range, speaking
rate and vocal-tract scale, all drawn from a seed; every clip is the trimmed word at a random offset
in one second of 16 kHz audio, at a random gain, over a low noise floor. Splits are by speaker, as
in Speech Commands, so validation and test scores measure unseen voices.

The engine is process-global C state, used under a lock and loaded afresh for every utterance so
that the samples depend on the word and the speaker only (see the engine section below).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import wave
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kws_ghost.errors import KwsError, print_stderr
from kws_ghost.fileio import (
    check_replaceable,
    disk_error,
    files_under,
    make_work_folder,
    owned_by,
    replace_folder,
)
from kws_ghost.progress import progress_enabled

SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0

# espeak-ng speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_RATE_MIN, _RATE_MAX = 80, 450

# English accents shipped in espeak-ng-data/lang/gmw (en-Shaw, the Shavian script, is left out).
ENGLISH_VOICES = (
    "gmw/en",
    "gmw/en-US",
    "gmw/en-US-nyc",
    "gmw/en-GB-scotland",
    "gmw/en-GB-x-rp",
    "gmw/en-GB-x-gbclan",
    "gmw/en-GB-x-gbcwmd",
    "gmw/en-029",
)
# Variants in espeak-ng-data/voices/!v that sound like a person. Left out: the robotic ones
# (robosoft*, UniRobot, anikaRobot, announcer, Demonic, RicishayMax* with long echoes), whispers
# (caleb, whisper, whisperf), test voices (fast) and the ones with broken formant tables
# (kaukovalta, Lee, Mr serious, Tweaky), and grandpa, rob and robert, in which librosa.pyin finds
# almost no voiced frames (grandpa 0%, rob 17%, robert 32% on "yes no down seven zero").
MALE_VARIANTS = (
    "",
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt6",
    "adam", "Alex", "Andy", "antonio", "benjamin", "boris", "david", "Denis", "Diogo", "ed",
    "edward", "edward2", "Gene", "gustave", "Henrique", "Hugo", "iven", "iven3",
    "Jacky", "Marco", "Mario", "max", "Michael", "michel", "miguel", "Mike", "mike2", "Nguyen",
    "paul", "pedro", "quincy", "Reed", "sandro", "travis",
)  # fmt: skip
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5",
    "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma", "linda", "shelby",
    "steph", "steph2", "steph3", "zac",
)  # fmt: skip

NOISE_KINDS = ("white", "pink", "brown", "hum", "babble")
BACKGROUND_FILES = {
    "white": "white_noise.wav",
    "pink": "pink_noise.wav",
    "brown": "brown_noise.wav",
    "hum": "hum.wav",
    "babble": "babble.wav",
}
# In every corpus synth writes: --force replaces only a folder that holds it.
SYNTH_MARKER = ".kws-ghost-synth"
MANIFEST = "synth_manifest.json"
# Other words every corpus gets by default as its _unknown_ material (a custom-keyword model must
# hear other speech to learn to stay quiet on it): common words, none of Speech Commands' ten
# keywords (so the default gsc12 task keeps them unknown) and no homophone of a common keyword.
OTHER_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "tree", "wow", "zero", "three", "five",
    "six", "seven", "nine", "hello", "music", "light", "today", "weather", "please", "thanks",
    "morning", "open", "close", "water", "okay", "coffee", "window", "number", "people",
    "maybe", "later", "really", "sorry", "good", "time", "home", "play", "turn", "kitchen",
    "table", "paper", "yellow", "purple", "orange", "apple", "banana", "river", "mountain",
    "pencil", "quiet", "little", "under", "over", "again", "after", "never", "always",
    "something", "nothing", "hundred", "minute", "system", "computer", "garden", "summer",
    "winter", "dinner", "doctor", "tomorrow", "yesterday", "question", "animal", "basket",
)  # fmt: skip
OTHER_WORDS_PER_VOICE = 24
WORD_PATTERN = re.compile(r"^[a-z]+(?:[-_][a-z]+)*$")
MAX_WORD_CHARS = 40


# --------------------------------------------------------------------------------------- engine
#
# espeak-ng keeps state between utterances in C statics that espeak_Terminate/espeak_Initialize do
# not reset (the pitch-flutter index, wave phase, echo buffer, Klatt noise): the same word said
# twice in a row gives different samples, by up to a few hundred samples in length. For output that
# depends only on (word, speaker), every utterance gets a freshly loaded library: dlclose, dlopen,
# espeak_Initialize, about 2 ms, plus ~8 ms to load the voice again. Measured here: the same word
# and voice then give identical samples whatever was said before, in any process.


def _data_and_library() -> tuple[Path, str]:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise KwsError(
            "synthesis needs the espeak-ng engine: pip install espeakng-loader "
            "(or kws-ghost[synth])"
        ) from exc
    try:
        return Path(espeakng_loader.get_data_path()), espeakng_loader.get_library_path()
    except RuntimeError as exc:
        raise KwsError(f"espeakng-loader is installed without its data: {exc}") from exc


_RTLD_NOLOAD = 4  # glibc
_PRIVATE_LIBRARY: Optional[str] = None  # a copy, used when someone else keeps the library loaded


def _dl() -> Optional[Any]:
    """libc's dlopen/dlclose (POSIX), or None where unloading is not available."""
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.dlclose.argtypes = [ctypes.c_void_p]
        libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.dlopen.restype = ctypes.c_void_p
        return libc
    except (OSError, AttributeError):
        return None


def _private_library_copy(library_path: str) -> str:
    """A copy of the library in a temporary folder (removed at exit): it loads as a new object."""
    global _PRIVATE_LIBRARY
    if _PRIVATE_LIBRARY is None:
        import atexit

        folder = tempfile.mkdtemp(prefix="kws-ghost-espeak-")
        atexit.register(shutil.rmtree, folder, True)
        _PRIVATE_LIBRARY = shutil.copy(library_path, folder)
    return _PRIVATE_LIBRARY


def _is_loaded(library_path: str) -> bool:
    dl = _dl()
    if dl is None:
        return False
    handle = dl.dlopen(library_path.encode(), _RTLD_NOLOAD | 1)
    if handle:
        dl.dlclose(handle)
    return bool(handle)


class _Engine:
    """One loaded and initialised espeak-ng, with a callback that collects samples."""

    def __init__(self) -> None:
        self.data_path, library_path = _data_and_library()
        self.library_path = _PRIVATE_LIBRARY or library_path
        try:
            lib = ctypes.CDLL(self.library_path)
        except OSError as exc:
            raise KwsError(f"cannot load espeak-ng from {self.library_path}: {exc}") from exc
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        # Some synthesis paths (breath, Klatt noise) call libc rand(): reseed it too, per utterance.
        try:
            self._srand = ctypes.CDLL(None).srand
            self._srand.argtypes = [ctypes.c_uint]
        except (OSError, AttributeError):
            self._srand = None
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise KwsError(f"espeak-ng failed to initialise with data at {self.data_path}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._callback = callback_type(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self.pid = os.getpid()

    def close(self) -> bool:
        """Unload the library so the next load starts from clean statics; False if it stays."""
        dl = _dl()
        if dl is None:
            return False
        self.lib.espeak_Terminate()  # frees the phoneme data and dictionaries it allocated
        dl.dlclose(self.lib._handle)
        return not _is_loaded(self.library_path)

    def _collect(self, samples: Any, count: int, events: Any) -> int:
        if count > 0 and samples:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0 = go on

    def synthesize(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, word_gap: int
    ) -> np.ndarray:
        """int16 samples at ``self.sample_rate`` for ``text`` (caller holds the lock)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise KwsError(f"espeak-ng has no voice {voice!r} in {self.data_path}")
        for parameter, value in (
            (_PARAM_RATE, rate),
            (_PARAM_PITCH, pitch),
            (_PARAM_RANGE, pitch_range),
            (_PARAM_VOLUME, 100),
            (_PARAM_WORDGAP, word_gap),
        ):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        if self._set_seed is not None:
            self._set_seed(1)
        if self._srand is not None:
            self._srand(1)
        self._chunks = []
        encoded = text.encode("utf-8") + b"\0"
        status = self.lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise KwsError(f"espeak-ng could not synthesise {text!r} (status {status})")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_ENGINE: Optional[_Engine] = None
_ENGINE_LOCK = threading.Lock()


def _fresh_engine() -> _Engine:
    """An engine with clean state: the previous one (if any, in this process) is unloaded first.

    If the library cannot be unloaded (another module holds it too), later loads use a private
    copy, which this process alone holds. Call with ``_ENGINE_LOCK`` held.
    """
    global _ENGINE
    if _ENGINE is not None and _ENGINE.pid == os.getpid():
        if not _ENGINE.close() and _PRIVATE_LIBRARY is None and _dl() is not None:
            _private_library_copy(_ENGINE.library_path)
    elif _PRIVATE_LIBRARY is None:
        # first use in this process: if another module already loaded espeak-ng, keep clear of it
        _, library_path = _data_and_library()
        if _is_loaded(library_path):
            _private_library_copy(library_path)
    _ENGINE = None
    _ENGINE = _Engine()
    return _ENGINE


def _has_voice(data_path: Path, voice: str) -> bool:
    """Whether ``voice`` ("gmw/en-US" or "gmw/en-US+f3") names files in the bundled data."""
    language, _, variant = voice.partition("+")
    if not (data_path / "lang" / language).is_file():
        return False
    return not variant or (data_path / "voices" / "!v" / variant).is_file()


def available_voices() -> tuple[list[str], list[str], list[str]]:
    """(accents, male-sounding variants, female-sounding variants) found in the bundled data."""
    data_path, _ = _data_and_library()
    languages = [lang for lang in ENGLISH_VOICES if _has_voice(data_path, lang)]
    male = [v for v in MALE_VARIANTS if not v or _has_voice(data_path, f"gmw/en+{v}")]
    female = [v for v in FEMALE_VARIANTS if _has_voice(data_path, f"gmw/en+{v}")]
    if not languages or not (male or female):
        raise KwsError(f"no English espeak-ng voices found under {data_path}")
    return languages, male, female


# -------------------------------------------------------------------------------------- speakers


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: everything that makes one voice differ from another.

    ``tract_scale`` resamples the output so all frequencies (pitch and formants) scale by it, as a
    shorter (> 1) or longer (< 1) vocal tract would; durations scale by its inverse.
    """

    speaker_id: str
    language: str
    variant: str
    pitch: int  # espeak 0..99, 50 = the variant's normal pitch
    pitch_range: int  # espeak 0..100, 0 = monotone
    rate: int  # words per minute, espeak 80..450
    word_gap: int = 0  # pause between words of a phrase, in 10 ms units
    tract_scale: float = 1.0
    gender: str = "male"

    @property
    def voice(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _speaker_id(seed: int, index: int, attempt: int) -> str:
    return hashlib.sha256(f"kws-ghost-synth:{seed}:{index}:{attempt}".encode()).hexdigest()[:8]


def make_speakers(n: int, seed: int = 0) -> list[Speaker]:
    """``n`` distinct synthetic speakers, the same for the same seed.

    Alternately female- and male-sounding. Variants and accents are each dealt from a shuffled
    deck (reshuffled when used up), so speakers repeat a variant only once every variant has been
    used, and then with another accent, pitch, rate and vocal-tract scale.
    """
    if n < 1:
        raise KwsError(f"--voices must be at least 1, not {n}")
    if seed < 0:
        raise KwsError(f"--seed must be 0 or more, not {seed}")
    languages, male, female = available_voices()
    rng = np.random.default_rng([seed, 0x5EED])
    decks: dict[str, list[str]] = {}

    def deal(name: str, cards: Sequence[str]) -> str:
        if not decks.get(name):
            decks[name] = [cards[i] for i in rng.permutation(len(cards))]
        return decks[name].pop()

    speakers: list[Speaker] = []
    used_ids: set[str] = set()
    for index in range(n):
        gender = (
            ("female", "male")[index % 2] if female and male else ("male" if male else "female")
        )
        variant = deal(gender, male if gender == "male" else female)
        language = deal("language", languages)
        attempt = 0
        while (speaker_id := _speaker_id(seed, index, attempt)) in used_ids:
            attempt += 1
        used_ids.add(speaker_id)
        speakers.append(
            Speaker(
                speaker_id=speaker_id,
                language=language,
                variant=variant,
                pitch=int(rng.integers(30, 81)),
                pitch_range=int(rng.integers(20, 91)),
                rate=int(rng.integers(135, 216)),
                word_gap=int(rng.integers(0, 4)),
                tract_scale=float(np.round(rng.uniform(0.90, 1.12), 3)),
                gender=gender,
            )
        )
    return speakers


def _repetition(speaker: Speaker, rng: np.random.Generator) -> Speaker:
    """The same speaker saying the word once more: small changes of rate, pitch and range."""
    return dataclasses.replace(
        speaker,
        rate=int(np.clip(round(speaker.rate * rng.uniform(0.92, 1.08)), _RATE_MIN, _RATE_MAX)),
        pitch=int(np.clip(speaker.pitch + rng.integers(-4, 5), 0, 99)),
        pitch_range=int(np.clip(speaker.pitch_range + rng.integers(-8, 9), 0, 100)),
        tract_scale=float(speaker.tract_scale * rng.uniform(0.99, 1.01)),
    )


# ------------------------------------------------------------------------------------ synthesis


def parse_words(text: str) -> list[str]:
    """``"yes, No,up"`` -> ``["yes", "no", "up"]``; '_' joins the words of a phrase."""
    words = [w.strip().lower() for w in text.split(",")]
    if not any(words):
        raise KwsError("--words is empty: give a comma-separated list, e.g. --words yes,no")
    if not all(words):
        raise KwsError(f"--words {text!r} has an empty item (two commas in a row?)")
    for word in words:
        if len(word) > MAX_WORD_CHARS or not WORD_PATTERN.match(word):
            raise KwsError(
                f"--words: {word!r} is not a plain word: use letters a-z, with '-' or '_' "
                f"(between the words of a phrase) inside, at most {MAX_WORD_CHARS} characters"
            )
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise KwsError(f"--words lists {', '.join(duplicates)} more than once")
    return words


def _trim(audio: np.ndarray, sample_rate: int, floor_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing silence: 10 ms frames quieter than ``floor_db`` below the loudest."""
    frame = max(1, sample_rate // 100)
    n_frames = len(audio) // frame
    if n_frames == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n_frames * frame].reshape(n_frames, frame) ** 2, axis=1))
    threshold = max(rms.max() * 10 ** (floor_db / 20), 1e-5)
    loud = np.flatnonzero(rms > threshold)
    if len(loud) == 0:
        return audio[:0]
    margin = frame  # keep 10 ms either side so onsets and releases are not clipped
    start = max(0, loud[0] * frame - margin)
    end = min(len(audio), (loud[-1] + 1) * frame + margin)
    return audio[start:end]


def _render(word: str, speaker: Speaker, sample_rate: int, rate: int) -> np.ndarray:
    import soxr

    text = word.replace("_", " ")
    with _ENGINE_LOCK:
        engine = _fresh_engine()
        samples = engine.synthesize(
            text, speaker.voice, rate, speaker.pitch, speaker.pitch_range, speaker.word_gap
        )
        source_rate = engine.sample_rate
    audio = samples.astype(np.float32) / 32768.0
    if len(audio) == 0:
        raise KwsError(f"espeak-ng produced no audio for {word!r} with voice {speaker.voice}")
    # Resampling to sample_rate / scale and playing at sample_rate scales every frequency by scale.
    audio = soxr.resample(audio, source_rate, sample_rate / speaker.tract_scale, quality="HQ")
    return _trim(np.asarray(audio, dtype=np.float32), sample_rate)


def synthesize_word(
    word: str,
    speaker: Speaker,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: Optional[float] = None,
) -> np.ndarray:
    """The bare utterance of ``word`` by ``speaker``: float32 mono, silence trimmed, not padded.

    With ``max_seconds``, a longer utterance is said again faster (up to espeak's 450 wpm, three
    tries); if it still does not fit it is cut with a 20 ms fade-out.
    """
    audio = _render(word, speaker, sample_rate, speaker.rate)
    if max_seconds is None:
        return audio
    limit = int(max_seconds * sample_rate)
    rate = speaker.rate
    for _ in range(3):
        if len(audio) <= limit or rate >= _RATE_MAX:
            break
        rate = min(_RATE_MAX, int(np.ceil(rate * len(audio) / limit * 1.05)))
        audio = _render(word, speaker, sample_rate, rate)
    if len(audio) > limit:
        audio = audio[:limit].copy()
        fade = min(limit, int(0.02 * sample_rate))
        audio[limit - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return audio


# ----------------------------------------------------------------------------------------- noise


def _colored_noise(
    rng: np.random.Generator, n: int, exponent: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    shape = np.zeros_like(freqs)
    shape[1:] = freqs[1:] ** (-exponent / 2)
    shape[freqs < 20] = 0.0  # nothing below 20 Hz: brown noise would otherwise be a slow drift
    noise = np.fft.irfft(spectrum * shape, n)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Two passes of a centred moving average of ``width`` samples (a triangle), O(n)."""
    width = max(1, int(width))
    for _ in range(2):
        padded = np.pad(x, (width // 2, width - width // 2), mode="edge")
        sums = np.cumsum(padded)
        x = (sums[width:] - sums[:-width])[: len(x)] / width
    return x


def make_noise(
    kind: str, seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A background-noise recording: float32 mono at about -20 dBFS RMS, peaks below 0.99.

    ``white``, ``pink`` and ``brown`` are coloured Gaussian noise; ``hum`` is 50 or 60 Hz mains hum
    with harmonics and a wandering level over pink noise; ``babble`` is speech-shaped noise whose
    level follows several talkers' syllable rhythm (no words, so it never contains a keyword).
    """
    if seed < 0:
        raise KwsError(f"noise seed must be 0 or more, not {seed}")
    if kind not in NOISE_KINDS:
        raise KwsError(f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_KINDS)}")
    n = int(round(seconds * sample_rate))
    if n <= 0:
        raise KwsError(f"noise length must be positive, not {seconds} s")
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
    if kind in ("white", "pink", "brown"):
        exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
        noise = _colored_noise(rng, n, exponent, sample_rate)
    elif kind == "hum":
        t = np.arange(n) / sample_rate
        mains = float(rng.choice([50.0, 60.0]))
        wobble = 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t)  # slow drift of the mains
        phase = 2 * np.pi * np.cumsum(mains + wobble) / sample_rate
        noise = sum((0.6**k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in range(1, 9))
        drift = _smooth(rng.standard_normal(n), sample_rate // 2)
        level = 1.0 + 0.15 * drift / max(float(drift.std()), 1e-12)
        noise = noise * level + 0.1 * _colored_noise(rng, n, 1.0, sample_rate)
    else:  # babble
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        # long-term speech spectrum: rises to ~500 Hz, falls ~9 dB/octave above 1 kHz
        shape = (freqs / 500) / (1 + (freqs / 500) ** 2) / (1 + (freqs / 1000) ** 1.5)
        base = np.fft.irfft(spectrum * shape, n)
        envelope = np.zeros(n)
        for _ in range(6):  # six talkers, each with its own syllable rate and pauses
            syllable_rate = rng.uniform(3.0, 6.0)
            steps = rng.random(int(seconds * syllable_rate) + 2) < 0.7
            talker = np.repeat(steps.astype(float), int(sample_rate / syllable_rate) + 1)[:n]
            talker = np.pad(talker, (0, n - len(talker)))
            envelope += _smooth(talker, int(sample_rate / syllable_rate / 2)) * rng.uniform(0.5, 1)
        noise = base * (0.2 + envelope)
    noise = np.asarray(noise, dtype=np.float64)
    noise -= noise.mean()
    noise *= 0.1 / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    peak = float(np.abs(noise).max())
    if peak > 0.99:
        noise *= 0.99 / peak
    return noise.astype(np.float32)


# ---------------------------------------------------------------------------------------- clips


def _clip_rng(seed: int, speaker_index: int, word: str, repetition: int) -> np.random.Generator:
    return np.random.default_rng([seed, speaker_index, zlib.crc32(word.encode()), repetition])


def place_in_clip(
    utterance: np.ndarray,
    rng: np.random.Generator,
    clip_samples: int = int(SAMPLE_RATE * CLIP_SECONDS),
) -> np.ndarray:
    """The utterance at a random offset and gain (peak -20..-3 dBFS) over a -60..-50 dBFS floor."""
    if len(utterance) > clip_samples:
        raise KwsError(f"utterance of {len(utterance)} samples does not fit {clip_samples}")
    peak = float(np.abs(utterance).max()) if len(utterance) else 0.0
    gain = 10 ** (rng.uniform(-20.0, -3.0) / 20) / max(peak, 1e-6)
    offset = int(rng.integers(0, clip_samples - len(utterance) + 1))
    floor = _colored_noise(rng, clip_samples, float(rng.choice([0.0, 1.0])))
    clip = floor * 10 ** (rng.uniform(-60.0, -50.0) / 20)
    clip[offset : offset + len(utterance)] += utterance * gain
    return np.clip(clip, -1.0, 32767 / 32768).astype(np.float32)


def write_wav(
    path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int = SAMPLE_RATE
) -> None:
    """16-bit PCM mono WAV (the stdlib writer: byte-for-byte reproducible)."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768), -32768, 32767)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.astype("<i2").tobytes())


# --------------------------------------------------------------------------------------- corpus


@dataclasses.dataclass
class SynthSummary:
    """What ``synthesize_corpus`` wrote."""

    out: str
    words: list[str]
    other_words: list[str]
    speakers: int
    clips: int
    clips_per_voice: int
    seed: int
    splits: dict[str, int]  # clips per split
    split_speakers: dict[str, int]
    background_noise: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_speakers(
    speaker_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """speaker id -> "training" | "validation" | "testing", every speaker in exactly one split.

    With 3 or more speakers each non-zero fraction gets at least one speaker and training keeps at
    least one; with fewer, everyone trains.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0):
        raise KwsError("--val-fraction and --test-fraction must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise KwsError("--val-fraction plus --test-fraction must leave speakers for training")
    n = len(speaker_ids)
    n_val = n_test = 0
    if n >= 3:
        n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
        n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
        while n_val + n_test > n - 1:  # keep a training speaker
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
    order = np.random.default_rng([seed, 0x5B11]).permutation(n)
    splits = {}
    for rank, index in enumerate(order):
        if rank < n_val:
            splits[speaker_ids[index]] = "validation"
        elif rank < n_val + n_test:
            splits[speaker_ids[index]] = "testing"
        else:
            splits[speaker_ids[index]] = "training"
    return splits


def _prepare_out(out: Path, force: bool) -> tuple[Path, set[str]]:
    """Check ``out`` and make the temporary folder beside it that becomes ``out`` at the end;
    also the files in an earlier corpus there that synth did not write (the user's: kept).

    ``out`` may be replaced (with ``force``) only if an earlier synth wrote it: it holds
    ``SYNTH_MARKER``, which every corpus gets from the start.
    """
    if not out.name or out.name in (".", ".."):
        raise KwsError(f"--out {str(out)!r} must name a folder to create (e.g. data/my_words)")
    users: set[str] = set()
    if check_replaceable(out, SYNTH_MARKER):
        if not force:
            raise KwsError(
                f"--out {out} holds an earlier synth corpus: add --force to replace it, "
                "or choose another folder"
            )
        users = files_under(out) - written_files(out)
    return make_work_folder(out, "synth", SYNTH_MARKER), users


def _clip_names(words: Sequence[str], speaker_ids: Sequence[str], clips: int) -> list[str]:
    return [f"{w}/{s}_nohash_{r}.wav" for s in speaker_ids for w in words for r in range(clips)]


def corpus_keywords(corpus: str | os.PathLike[str]) -> Optional[list[str]]:
    """The keywords of a corpus synth wrote (its manifest's words), or None."""
    path = Path(corpus)
    if not owned_by(path, SYNTH_MARKER):
        return None
    try:
        words = json.loads((path / MANIFEST).read_text())["words"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(word) for word in words] if isinstance(words, list) and words else None


def written_files(corpus: Path) -> set[str]:
    """The files synth wrote in ``corpus``: its manifest's list (corpora of earlier versions:
    the names their manifest's words, speakers and clip count give)."""
    try:
        manifest = json.loads((corpus / MANIFEST).read_text())
        if "files" in manifest:
            return {str(name) for name in manifest["files"]}
        ids = [str(s["speaker_id"]) for s in manifest["speakers"]]
        clips = _clip_names(manifest["words"], ids, int(manifest["clips_per_voice"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KwsError(
            f"--out {corpus}: its {MANIFEST} is missing or unreadable ({exc}), so the files "
            "synth wrote cannot be told from yours; move the folder away yourself"
        ) from None
    fixed = [SYNTH_MARKER, MANIFEST, "validation_list.txt", "testing_list.txt"]
    return set(clips + fixed + [f"_background_noise_/{f}" for f in BACKGROUND_FILES.values()])


@dataclasses.dataclass(frozen=True)
class _SpeakerJob:
    words: tuple[str, ...]
    speaker: Speaker
    index: int
    seed: int
    clips_per_voice: int
    folder: str
    others: tuple[str, ...] = ()  # other words, one clip each


def other_words_of(keywords: Sequence[str], per_voice: int, seed: int, index: int) -> list[str]:
    """The ``per_voice`` other words (``OTHER_WORDS`` less the keywords) speaker ``index`` says."""
    pool = [word for word in OTHER_WORDS if word not in keywords]
    if per_voice <= 0 or not pool:
        return []
    rng = np.random.default_rng([seed, index, 7])
    return [pool[i] for i in sorted(rng.choice(len(pool), min(per_voice, len(pool)), False))]


def _speaker_clips(job: _SpeakerJob) -> list[str]:
    """Write every clip of one speaker (runs in a worker process or in-line); the relative names."""
    names = []
    plan = [(w, job.clips_per_voice) for w in job.words] + [(w, 1) for w in job.others]
    for word, takes in plan:
        for repetition in range(takes):
            rng = _clip_rng(job.seed, job.index, word, repetition)
            take = job.speaker if repetition == 0 else _repetition(job.speaker, rng)
            utterance = synthesize_word(word, take, SAMPLE_RATE, CLIP_SECONDS * 0.96)
            clip = place_in_clip(utterance, rng, int(SAMPLE_RATE * CLIP_SECONDS))
            name = f"{word}/{job.speaker.speaker_id}_nohash_{repetition}.wav"
            write_wav(Path(job.folder) / name, clip)
            names.append(name)
    return names


def _worker_count(workers: int, clips: int) -> int:
    """0 = automatic: in-line below 1000 clips (~10 s), where new processes cost more than they
    save; one per core above."""
    if workers > 0:
        return workers
    if clips < 1000:
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def synthesize_corpus(
    words: Sequence[str],
    out: str | os.PathLike[str],
    voices: int = 40,
    clips_per_voice: int = 3,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    force: bool = False,
    background_seconds: float = 20.0,
    progress: Optional[bool] = None,
    workers: int = 1,
    warn: Optional[Callable[[str], None]] = None,
    other_words: int = OTHER_WORDS_PER_VOICE,
) -> SynthSummary:
    """Write a Speech Commands-layout corpus of ``words`` said by ``voices`` synthetic speakers,
    each of whom also says ``other_words`` words of ``OTHER_WORDS`` (not among ``words``) once:
    the ``_unknown_`` material a custom-keyword model learns to stay quiet on (0: none).

    ``out/WORD/SPEAKERID_nohash_N.wav`` (1 s, 16 kHz, mono, int16), ``validation_list.txt`` and
    ``testing_list.txt`` (speaker-disjoint), ``_background_noise_/*.wav`` and
    ``synth_manifest.json`` (speakers and settings). Built beside ``out`` and renamed at the end.
    ``out`` must be absent, empty, or (with ``force``) an earlier synth corpus (it holds
    ``SYNTH_MARKER``); anything else is refused. ``progress``: draw a bar (None: only on a
    terminal, see ``kws_ghost.progress``). ``warn``: gets the one-line warnings (default: stderr),
    e.g. when a held-out split gets no speakers. ``workers``:
    processes (each with its own espeak-ng, started with "spawn", so a calling script needs the
    ``if __name__ == "__main__":`` guard); 0 picks one per core for corpora of 1000 clips or more.
    The bytes written do not depend on it.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    words = parse_words(",".join(words)) if not isinstance(words, str) else parse_words(words)
    if clips_per_voice < 1:
        raise KwsError(f"--clips-per-voice must be at least 1, not {clips_per_voice}")
    out_path = Path(out)
    speakers = make_speakers(voices, seed)
    assignment = split_speakers([s.speaker_id for s in speakers], val_fraction, test_fraction, seed)
    empty = [
        split
        for split, fraction in (("validation", val_fraction), ("testing", test_fraction))
        if fraction > 0 and split not in assignment.values()
    ]
    tmp, user_files = _prepare_out(out_path, force)
    try:
        if empty:
            (warn or print_stderr)(
                f"warning: --voices {voices} leaves {' and '.join(empty)} without speakers "
                "(held-out splits need 3 or more voices): every clip goes to training"
            )
        lists: dict[str, list[str]] = {"training": [], "validation": [], "testing": []}
        jobs = [
            _SpeakerJob(
                tuple(words),
                speaker,
                index,
                seed,
                clips_per_voice,
                str(tmp),
                tuple(other_words_of(words, other_words, seed, index)),
            )
            for index, speaker in enumerate(speakers)
        ]
        others = sorted({word for job in jobs for word in job.others})
        other_clips = sum(len(job.others) for job in jobs)
        total = len(words) * len(speakers) * clips_per_voice + other_clips
        disable = not progress_enabled(progress)
        for word in [*words, *others]:
            (tmp / word).mkdir()
        workers = _worker_count(workers, total)
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(tqdm(total=total, desc="synth", unit="clip", disable=disable))
            if workers > 1:
                import concurrent.futures
                import multiprocessing

                # spawn, not fork: the caller may hold threads (torch) and espeak's C state
                pool = stack.enter_context(
                    concurrent.futures.ProcessPoolExecutor(
                        workers, mp_context=multiprocessing.get_context("spawn")
                    )
                )
                results = pool.map(_speaker_clips, jobs)
            else:
                results = map(_speaker_clips, jobs)
            for job, names in zip(jobs, results):
                lists[assignment[job.speaker.speaker_id]].extend(names)
                bar.update(len(names))
        for split, filename in (
            ("validation", "validation_list.txt"),
            ("testing", "testing_list.txt"),
        ):
            text = "".join(f"{name}\n" for name in sorted(lists[split]))
            (tmp / filename).write_text(text)
        noise_dir = tmp / "_background_noise_"
        noise_dir.mkdir()
        for kind, filename in BACKGROUND_FILES.items():
            write_wav(noise_dir / filename, make_noise(kind, background_seconds, seed))
        split_speaker_counts = {
            split: sum(1 for v in assignment.values() if v == split) for split in lists
        }
        manifest = {
            "generator": "kws-ghost synth (espeak-ng via espeakng-loader)",
            "words": words,  # the keywords; kws-ghost train takes them as its default
            "other_words": others,
            "other_words_per_voice": other_words,
            "seed": seed,
            "clips_per_voice": clips_per_voice,
            "sample_rate": SAMPLE_RATE,
            "speakers": [dict(s.to_dict(), split=assignment[s.speaker_id]) for s in speakers],
        }
        manifest["files"] = sorted(files_under(tmp) | {MANIFEST})  # what --force may replace
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        clashes = sorted(user_files & set(manifest["files"]))
        if clashes:
            raise KwsError(
                f"--out {out_path} holds files synth did not write where the new corpus goes "
                f"({', '.join(clashes[:3])}); move them away first"
            )
        replace_folder(tmp, out_path, SYNTH_MARKER, keep=sorted(user_files))
        if user_files:
            (warn or print_stderr)(
                f"note: kept {len(user_files)} file{'s' * (len(user_files) != 1)} in {out_path} "
                f"that synth did not write: {', '.join(sorted(user_files)[:5])}"
                + (" ..." if len(user_files) > 5 else "")
            )
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(out_path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthSummary(
        out=str(out_path),
        words=list(words),
        other_words=others,
        speakers=len(speakers),
        clips=total,
        clips_per_voice=clips_per_voice,
        seed=seed,
        splits={split: len(names) for split, names in lists.items()},
        split_speakers=split_speaker_counts,
        background_noise=[f"_background_noise_/{f}" for f in BACKGROUND_FILES.values()],
        seconds=round(time.perf_counter() - started, 3),
    )
