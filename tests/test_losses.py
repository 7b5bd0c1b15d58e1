"""The stream objective's loss terms on hand-made logits."""

import torch

from kws_ghost.losses import distillation_loss, hardest_background_loss, stream_loss
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


def test_distillation_loss_is_the_temperature_scaled_divergence_from_the_teacher():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert distillation_loss(teacher, teacher, 2.0).abs() < 1e-6  # nothing to learn
    p = (teacher / 3.0).softmax(-1)
    q = (student / 3.0).softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean() * 9.0
    assert torch.allclose(distillation_loss(student, teacher, 3.0), expected, atol=1e-6)
    # its gradient moves the student's posteriors towards the teacher's
    student.requires_grad_(True)
    distillation_loss(student, teacher, 1.0).backward()
    stepped = (student - 0.1 * student.grad).detach()
    assert distillation_loss(stepped, teacher, 1.0) < distillation_loss(
        student.detach(), teacher, 1.0
    )
