"""Training objectives on per-frame logits.

* ``clip_loss``: one label per clip, cross-entropy on the clip's pooled logits (mean or last
  frame), the recipe of isolated 1 s clips.
* ``stream_loss``: per-frame targets on long sequences (``kws_ghost.sequences``). Each keyword
  region contributes the cross-entropy of its best frame for that keyword (max-pooling, as WeKws's
  ``max_pooling_loss``: fire once, where the model is surest, anywhere in the region); every frame
  outside keyword regions contributes its frame cross-entropy towards ``_silence_`` or
  ``_unknown_``, which keeps every keyword's posterior low there; and every frame inside a region
  must not be *another* keyword: -log(p_k + p_silence + p_unknown). Without that last term the
  frames of a word other than its peak were free, and a 1 s clip of "yes" scored 0.9 for "left"
  somewhere (validation clip accuracy 0.27 against 0.98 of peaks right). The three means are
  added, so keywords and background weigh alike however many frames each has.
  With ``negative_peak``, each sequence also adds (times that weight) -log(p_silence +
  p_unknown) at its background frame where a keyword's posterior peaks: the streaming rule fires
  on one frame, so the mean over thousands of easy frames let a few confusable ones through
  (WeKws's max-pooling loss treats negatives alike).
* ``distillation_loss``: the divergence of every frame's posteriors from a teacher model's
  (Hinton et al. 2015): the teacher says, frame by frame, which other words a keyword resembles
  and how sure to be between words, which one-hot frame targets do not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kws_ghost.sequences import IGNORE


def pooled_logits(frame_logits: Tensor, pooling: str) -> Tensor:
    """Clip logits [B, C] of frame logits [B, T, C] for the clip objective."""
    if pooling == "last":
        return frame_logits[:, -1]
    return frame_logits.mean(dim=1)


def clip_loss(
    frame_logits: Tensor, target: Tensor, pooling: str, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(loss, predicted class per clip)."""
    logits = pooled_logits(frame_logits.float(), pooling)
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return loss, logits.argmax(1)


def region_frames(regions: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """(batch rows, labels, inside mask [N, T]) of the valid regions."""
    rows, slots = torch.nonzero(regions[..., 2] >= 0, as_tuple=True)
    first, last, labels = regions[rows, slots].unbind(-1)
    t = torch.arange(steps, device=regions.device)
    return rows, labels, (t >= first[:, None]) & (t <= last[:, None])


def stream_loss(
    frame_logits: Tensor,
    targets: Tensor,
    regions: Tensor,
    background: list[int],
    label_smoothing: float = 0.0,
    region_mean: bool = False,
    negative_peak: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(loss, counts for progress: keyword regions found at their peak, regions, frames with a
    target right, frames with a target)."""
    logits = frame_logits.float()
    labelled = targets != IGNORE  # frames with a target (background; keyword tails)
    loss = logits.new_zeros(())
    stats: dict[str, Tensor] = {}
    if labelled.any():
        loss = loss + F.cross_entropy(
            logits[labelled], targets[labelled], label_smoothing=label_smoothing
        )
    stats["background_right"] = (logits[labelled].argmax(-1) == targets[labelled]).sum()
    stats["background"] = labelled.sum()
    if negative_peak:
        loss = loss + negative_peak * hardest_background_loss(logits, targets, background)
    rows, labels, inside = region_frames(regions, logits.shape[1])
    if len(rows):
        log_probs = logits[rows].log_softmax(-1)  # [N, T, C]
        curve = log_probs.detach().gather(2, labels[:, None, None].expand(-1, inside.shape[1], 1))
        peak = curve[..., 0].masked_fill(~inside, float("-inf")).argmax(dim=1)
        at_peak = logits[rows, peak]  # [N, C]
        loss = loss + F.cross_entropy(at_peak, labels, label_smoothing=label_smoothing)
        allowed = torch.cat(
            [
                log_probs.gather(2, labels[:, None, None].expand(-1, inside.shape[1], 1)),
                log_probs[..., background],
            ],
            dim=2,
        ).logsumexp(dim=2)  # log(p_k + p_silence + p_unknown), [N, T]
        loss = loss - allowed[inside].mean()
        if region_mean:  # the clip objective, on each keyword's region
            mean = (logits[rows] * inside[..., None]).sum(1) / inside.sum(1, keepdim=True)
            loss = loss + F.cross_entropy(mean, labels, label_smoothing=label_smoothing)
        stats["keywords_right"] = (at_peak.argmax(-1) == labels).sum()
    else:
        stats["keywords_right"] = logits.new_zeros((), dtype=torch.long)
    stats["keywords"] = logits.new_tensor(len(rows), dtype=torch.long)
    return loss, stats


def hardest_background_loss(logits: Tensor, targets: Tensor, background: list[int]) -> Tensor:
    """Mean over sequences of -log(p_silence + p_unknown) at the background frame (target a
    background class) where some keyword's posterior is highest; sequences without one add 0."""
    log_probs = logits.log_softmax(-1)  # [B, T, C]
    is_background = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    is_background[background] = True
    frames = is_background[targets.clamp(min=0)] & (targets != IGNORE)  # [B, T]
    if not frames.any():
        return logits.new_zeros(())
    keyword_peak = log_probs.detach()[..., ~is_background].amax(-1)  # [B, T]
    hardest = keyword_peak.masked_fill(~frames, float("-inf")).argmax(dim=1)  # [B]
    rows = torch.nonzero(frames.any(dim=1), as_tuple=True)[0]
    at_hardest = log_probs[rows, hardest[rows]]  # [N, C]
    return -at_hardest[:, background].logsumexp(-1).mean()


def distillation_loss(frame_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Mean over frames of KL(teacher || student) of the posteriors at ``temperature``, times
    its square so the gradient's scale does not depend on it."""
    student = (frame_logits.float() / temperature).log_softmax(-1)
    teacher = (teacher_logits.float() / temperature).log_softmax(-1)
    divergence = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    return divergence.mean() * temperature**2
