"""The stream objective's loss terms on hand-made logits."""

import torch

from kws_ghost.losses import hardest_background_loss, stream_loss
from kws_ghost.sequences import IGNORE

# classes: 0, 1 keywords; 2 _silence_; 3 _unknown_
BACKGROUND = [2, 3]


def test_hardest_background_loss_reads_only_the_frame_where_a_keyword_peaks():
    logits = torch.zeros(1, 5, 4)
    logits[0, :, 2] = 4.0  # every frame sure of silence ...
    logits[0, 3, 1] = 6.0  # ... but frame 3, where keyword 1 peaks
    logits[0, 1, 0] = 9.0  # frame 1 is higher still, but it lies in a keyword region
    targets = torch.tensor([[2, IGNORE, 2, 3, 2]])
    logits.requires_grad_(True)
    loss = hardest_background_loss(logits, targets, BACKGROUND)
    expected = -logits[0, 3].log_softmax(-1)[BACKGROUND].logsumexp(-1)
    assert torch.isclose(loss, expected)
    loss.backward()
    touched = logits.grad.abs().sum(-1)[0]
    assert touched[3] > 0 and touched.sum() == touched[3]


def test_negative_peak_adds_its_weighted_term_and_zero_leaves_the_loss_as_it_was():
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 4)
    targets = torch.tensor([[2] * 8, [3, 3, IGNORE, IGNORE, 2, 2, 2, 2]])
    regions = torch.tensor([[[-1, -1, -1]], [[2, 3, 0]]])
    plain, _ = stream_loss(logits, targets, regions, BACKGROUND)
    off, _ = stream_loss(logits, targets, regions, BACKGROUND, negative_peak=0.0)
    on, _ = stream_loss(logits, targets, regions, BACKGROUND, negative_peak=0.5)
    assert torch.equal(plain, off)
    hardest = hardest_background_loss(logits, targets, BACKGROUND)
    assert hardest > 0
    assert torch.isclose(on, plain + 0.5 * hardest)


def test_sequences_without_background_frames_add_nothing():
    logits = torch.randn(1, 4, 4)
    targets = torch.full((1, 4), IGNORE)
    assert hardest_background_loss(logits, targets, BACKGROUND) == 0
