"""Corpus scanning, tasks, splits and augmentation."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kws_ghost.cli import main
from kws_ghost.data import (
    SILENCE,
    UNKNOWN,
    AugmentConfig,
    ClipDataset,
    EpochSampler,
    build_items,
    count_labels,
    hash_split,
    resolve_labels,
    scan_corpus,
    speaker_of,
    spec_augment,
    time_shift,
)
from kws_ghost.errors import KwsError


def test_scan_reads_layout_and_lists(tiny_corpus):
    corpus = scan_corpus(tiny_corpus)
    assert sorted(corpus.words) == ["maybe", "no", "yes"]
    assert len(corpus.noise_files) == 1
    assert corpus.split_of["yes/spk00004_nohash_0.wav"] == "validation"
    assert corpus.split_of["no/spk00005_nohash_1.wav"] == "testing"
    assert corpus.split_of["no/spk00000_nohash_1.wav"] == "training"


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_scan_rejects_what_is_not_a_corpus(tmp_path, make):
    target = tmp_path / "x"
    if make == "file":
        target.write_text("hello")
    elif make == "empty":
        target.mkdir()
    with pytest.raises(KwsError, match=str(target)):
        scan_corpus(target)


def test_without_lists_splits_by_speaker_hash(tiny_corpus):
    (tiny_corpus / "validation_list.txt").unlink()
    (tiny_corpus / "testing_list.txt").unlink()
    notes = []
    corpus = scan_corpus(tiny_corpus, warn=notes.append)
    assert notes and "speaker hash" in notes[0]
    for path, split in corpus.split_of.items():
        assert split == hash_split(path)
    # all clips of one speaker land in one split
    by_speaker = {}
    for path, split in corpus.split_of.items():
        by_speaker.setdefault(speaker_of(path), set()).add(split)
    assert all(len(s) == 1 for s in by_speaker.values())


def test_gsc12_labels_drop_missing_classes_with_a_note(tiny_corpus):
    corpus = scan_corpus(tiny_corpus)
    notes = []
    labels = resolve_labels(corpus, "gsc12", warn=notes.append)
    assert labels == [SILENCE, UNKNOWN, "yes", "no"]  # maybe -> unknown; 8 keywords missing
    assert any("no clips for up" in n for n in notes)


def test_custom_task_without_other_words_or_noise(tiny_corpus):
    shutil.rmtree(tiny_corpus / "_background_noise_")
    corpus = scan_corpus(tiny_corpus)
    notes = []
    labels = resolve_labels(corpus, "custom", ["yes", "no", "maybe"], warn=notes.append)
    assert labels == ["yes", "no", "maybe"]
    assert any("no _silence_" in n for n in notes) and any("no _unknown_" in n for n in notes)
    with pytest.raises(KwsError, match="none of the keywords"):
        resolve_labels(corpus, "custom", ["zebra"])


def test_gsc35_uses_every_word(tiny_corpus):
    assert resolve_labels(scan_corpus(tiny_corpus), "gsc35") == ["maybe", "no", "yes"]


def test_items_fractions_and_determinism(tiny_corpus):
    corpus = scan_corpus(tiny_corpus)
    labels = resolve_labels(corpus, "custom", ["yes", "no"])
    items = build_items(corpus, labels, "training", seed=3, fraction=0.1)
    counts = count_labels(items, labels)
    assert counts["yes"] == counts["no"] == 8
    # each extra class is about 10% of the split: ceil(16 * 0.1 / 0.8) = 2
    assert counts[SILENCE] == 2 and counts[UNKNOWN] == 2
    again = build_items(corpus, labels, "training", seed=3, fraction=0.1)
    assert [(i.label, i.path) for i in items] == [(i.label, i.path) for i in again]
    test_items = build_items(corpus, labels, "test")
    assert all(i.path is None or "spk00005" in i.path for i in test_items)


def test_dataset_pads_and_augments_deterministically(tiny_corpus):
    corpus = scan_corpus(tiny_corpus)
    labels = resolve_labels(corpus, "custom", ["yes", "no"])
    items = build_items(corpus, labels, "training")
    short = next(i for i, item in enumerate(items) if item.path and item.path.endswith("_1.wav"))
    plain = ClipDataset(corpus, items)
    audio, label, failed = plain[short]
    assert failed == -1
    assert audio.shape == (16000,) and audio.dtype == np.float32
    assert np.all(audio[12000:] == 0)  # zero-padded to 1 s
    augmented = ClipDataset(corpus, items, augment=AugmentConfig(), seed=1)
    a1, _, _ = augmented[(1, short)]
    a2, _, _ = augmented[(1, short)]
    a3, _, _ = augmented[(2, short)]
    assert np.array_equal(a1, a2) and not np.array_equal(a1, a3)
    assert not np.array_equal(a1, audio)
    silence = next(i for i, item in enumerate(items) if item.path is None)
    s1, s_label, _ = plain[silence]
    assert labels[s_label] == SILENCE and np.abs(s1).max() > 0
    assert np.array_equal(s1, plain[(5, silence)][0])  # evaluation silence is fixed per item


def test_time_shift_keeps_length():
    x = np.arange(10, dtype=np.float32)
    assert time_shift(x, 3).tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert time_shift(x, -2).tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 0]


def test_sampler_shards_are_disjoint_and_even():
    shards = [list(EpochSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    seen = [i for s in shards for _, i in s]
    assert set(seen) == set(range(10))
    evaluation = [
        list(EpochSampler(10, shuffle=False, rank=r, world_size=3, even=False)) for r in range(3)
    ]
    assert sorted(i for s in evaluation for _, i in s) == list(range(10))
    a, b = EpochSampler(10, seed=1), EpochSampler(10, seed=1)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_spec_augment_masks_with_fill():
    features = torch.randn(4, 50, 10)
    fill = torch.full((10,), 7.0)
    config = AugmentConfig(time_masks=2, time_mask_frames=8, freq_masks=2, freq_mask_bins=3)
    out = spec_augment(features, config, fill, torch.Generator().manual_seed(0))
    changed = out != features
    assert changed.any() and torch.all(out[changed] == 7.0)
    none = spec_augment(
        features, AugmentConfig(time_masks=0, freq_masks=0), fill, torch.Generator()
    )
    assert torch.equal(none, features)


def test_data_stats_cli(tiny_corpus):
    result = CliRunner().invoke(
        main, ["data-stats", str(tiny_corpus), "--keywords", "yes,no", "--json"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["labels"] == [SILENCE, UNKNOWN, "yes", "no"]
    assert stats["splits"]["validation"]["yes"] == 2
    text = CliRunner().invoke(main, ["data-stats", str(tiny_corpus)])
    assert text.exit_code == 0 and "training" in text.output
    missing = CliRunner().invoke(main, ["data-stats", str(tiny_corpus / "nope")])
    assert missing.exit_code == 1 and "no such data folder" in missing.output


def test_speech_span_of_a_quiet_word_over_a_noise_floor():
    from kws_ghost.data import speech_span

    rng = np.random.default_rng(0)
    audio = 0.002 * rng.standard_normal(16000)  # floor about 24 dB under the word
    audio[5000:9000] += 0.03 * np.sin(2 * np.pi * 300 * np.arange(4000) / 16000)
    lo, hi = speech_span(audio, 16000)
    assert abs(lo - 5000) <= 160 and abs(hi - 9000) <= 160
    assert speech_span(np.zeros(16000), 16000) == (0, 16000)


def test_word_fragments_become_unknown_examples(tiny_corpus):
    from kws_ghost.config import AugmentConfig as Augment
    from kws_ghost.data import speech_span, word_fragment

    corpus = scan_corpus(tiny_corpus)
    labels = resolve_labels(corpus, "custom", ["yes", "no"])
    items = build_items(corpus, labels, "training")
    unknown = labels.index(UNKNOWN)
    config = Augment(
        noise_prob=0.0, time_shift_ms=0.0, time_masks=0, freq_masks=0, fragment_prob=1.0
    )
    dataset = ClipDataset(corpus, items, augment=config, fragment_label=unknown)
    keyword = next(i for i, item in enumerate(items) if labels[item.label] == "yes")
    audio, label, _ = dataset[(0, keyword)]
    assert label == unknown
    # a fragment sits at one edge of the window and holds at most half of the word
    lo, hi = speech_span(dataset.load_clip(items[keyword].path), 16000)
    kept_lo, kept_hi = speech_span(audio, 16000)
    assert kept_lo < 400 or kept_hi > 16000 - 400
    assert kept_hi - kept_lo <= 0.55 * (hi - lo)
    # silence items and evaluation are untouched
    silence = next(i for i, item in enumerate(items) if item.path is None)
    assert dataset[(0, silence)][1] == labels.index(SILENCE)
    assert ClipDataset(corpus, items, fragment_label=unknown)[keyword][1] == items[keyword].label
    rng = np.random.default_rng(0)
    assert word_fragment(np.zeros(16000, np.float32), rng, 16000).shape == (16000,)


def test_training_sequences_and_their_frame_targets(tiny_corpus):
    from kws_ghost.config import FrontendConfig, SequenceConfig
    from kws_ghost.sequences import IGNORE, SequenceDataset

    corpus = scan_corpus(tiny_corpus)
    labels = resolve_labels(corpus, "gsc12")  # _silence_, _unknown_ (maybe), yes, no
    items = build_items(corpus, labels, "training")
    fe = FrontendConfig()
    config = SequenceConfig(seconds=4.0, words=2, distractors=1, trim_prob=0.5)
    others = corpus.clips("maybe", "training")
    dataset = SequenceDataset(ClipDataset(corpus, items), labels, config, fe, 3, others)
    assert len(dataset) == (len(items) + 1) // 2
    members = [m for i in range(len(dataset)) for m in dataset.members(0, i)]
    assert sorted(set(members)) == list(range(len(items)))  # every item once per epoch
    assert dataset.members(1, 0) != dataset.members(0, 0) or dataset.members(1, 1) != (
        dataset.members(0, 1)
    )
    keywords = {labels.index("yes"), labels.index("no")}
    seen_regions = 0
    for i in range(len(dataset)):
        audio, targets, regions, failed = dataset[(0, i)]
        again = dataset[(0, i)]
        assert np.array_equal(audio, again[0]) and np.array_equal(targets, again[1])
        assert audio.shape == (64000,) and targets.shape == (fe.num_frames(64000),)
        assert regions.shape == (3, 3) and (failed == -1).all()
        assert set(np.unique(targets)) <= {IGNORE, 0, 1, *keywords}
        for first, last, label in regions:
            if label < 0:
                continue
            seen_regions += 1
            assert label in keywords and 0 <= first <= last < len(targets)
            assert (targets[first : last + 1] == IGNORE).all()  # the region is the max-pool's
            assert last - first > 10
            # the region holds the word: its frames are far louder than the noise-free floor
            region = audio[first * fe.hop_length : last * fe.hop_length + fe.n_fft]
            quietest = np.sort(np.square(audio).reshape(-1, 160).mean(1))[:20].mean()
            assert np.square(region).mean() > 10 * quietest
        assert (targets == labels.index("_unknown_")).any()  # the distractor
    assert seen_regions >= len([it for it in items if it.label in keywords]) * 0.9


def test_frames_ending_in_counts_a_frames_last_sample():
    from kws_ghost.config import FrontendConfig
    from kws_ghost.sequences import frames_ending_in

    fe = FrontendConfig()  # frame i covers samples [160 i, 160 i + 512)
    assert frames_ending_in(fe, 0, 511, 100) == range(0, 1)
    assert frames_ending_in(fe, 0, 510, 100) == range(0, 0)
    assert frames_ending_in(fe, 512, 671, 100) == range(1, 2)
    assert frames_ending_in(fe, 0, 10**6, 97) == range(0, 97)


def test_speed_perturbation_changes_words_and_keeps_sequences_full(tiny_corpus):
    from kws_ghost.config import FrontendConfig, SequenceConfig
    from kws_ghost.sequences import SequenceDataset, speed_changed

    tone = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 400).astype(np.float32)
    faster = speed_changed(tone, 1.25, 16000)
    assert len(faster) == 12800  # a quarter faster: 0.8 s
    spectrum = np.abs(np.fft.rfft(faster[:8000] * np.hanning(8000)))
    assert abs(spectrum.argmax() * 2 - 500) <= 4  # and a quarter higher: 400 -> 500 Hz

    corpus = scan_corpus(tiny_corpus)
    labels = resolve_labels(corpus, "gsc12")
    items = build_items(corpus, labels, "training")
    fe = FrontendConfig()
    plain = SequenceConfig(seconds=3.0, words=2, distractors=1, trim_prob=0.0)
    others = corpus.clips("maybe", "training")

    def sequences(config: SequenceConfig) -> list:
        dataset = SequenceDataset(ClipDataset(corpus, items), labels, config, fe, 3, others)
        return [dataset[(0, i)] for i in range(len(dataset))]

    before = sequences(plain)
    # untrimmed 1 s words slowed by up to 20% would not fit three to 3 s: each is cut to 1 s
    after = sequences(SequenceConfig(**{**plain.__dict__, "speed_perturb": 0.2}))
    assert plain.validate() is None and len(after) == len(before)
    changed = 0
    for (audio, _, regions, _), (audio0, _, regions0, _) in zip(after, before):
        assert audio.shape == audio0.shape and np.isfinite(audio).all()
        assert sorted(regions[:, 2]) == sorted(regions0[:, 2])  # the same keywords
        changed += not np.allclose(audio, audio0)
    assert changed == len(after)
