"""The keyword classifier and its factory.

``KeywordModel(features, state) -> (frame logits, state)`` serves training, evaluation, streaming
and export alike: per-frame logits from a causal recurrent stack, with the recurrent state passed
in and out, so a stream of any length runs through it chunk by chunk. Clip scores come from the
frame logits by the model's pooling (``kws_ghost.runtime.clip_scores``). Feature normalisation
(per-coefficient mean and std of the training split) lives in the model as buffers, so a
checkpoint or an exported graph takes raw front-end features.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from kws_ghost.config import ModelConfig
from kws_ghost.layers import GhostRNN


class KeywordModel(nn.Module):
    """Normalise -> recurrent stack -> dropout -> linear head, for every frame."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.input_dim))
        self.register_buffer("feature_std", torch.ones(config.input_dim))
        # a BatchNorm over frames after the stored statistics: batch statistics while training,
        # a fixed per-coefficient affine map at inference (``input_affine``)
        self.input_bn = nn.BatchNorm1d(config.input_dim) if config.input_norm == "batch" else None
        self.rnn = GhostRNN(
            cell=config.cell,
            input_size=config.input_dim,
            hidden_size=config.hidden,
            num_layers=config.layers,
            ratio=config.effective_ratio,
            cheap_op=config.cheap_op,
            activation=config.cheap_activation,
            dropout=config.dropout,
            cheap_init=config.cheap_init,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.num_classes)

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-5))

    def normalize(self, features: Tensor) -> Tensor:
        """Raw features [B, T, F] or frames [B, F] -> the recurrent stack's input."""
        x = (features - self.feature_mean) / self.feature_std
        if self.input_bn is None:
            return x
        if x.dim() == 3:  # BatchNorm1d takes channels second
            return self.input_bn(x.transpose(1, 2)).transpose(1, 2)
        return self.input_bn(x)

    def input_affine(self) -> tuple[Tensor, Tensor]:
        """(mean, std) with ``(features - mean) / std`` equal to ``normalize`` at inference: the
        stored statistics with an input BatchNorm's running statistics and affine map folded in.
        What exports and devices apply (std is negative where a BatchNorm gain is)."""
        if self.input_bn is None:
            return self.feature_mean, self.feature_std
        bn = self.input_bn
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        std = self.feature_std / gain
        return self.feature_mean + self.feature_std * (bn.running_mean - bn.bias / gain), std

    def forward(self, features: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """features [B, T, F] (raw front-end output), state [layers, B, S] or None (zeros) ->
        (frame logits [B, T, classes], state after the last frame)."""
        y, state = self.rnn(self.normalize(features), state)
        return self.head(self.dropout(y)), state

    def step(self, frame: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One feature frame [B, F] -> (frame logits [B, classes], new state): what a device runs
        per frame, and what export traces."""
        y, state = self.rnn.step(self.normalize(frame), state)
        return self.head(y), state

    def initial_state(self, batch: int = 1) -> Tensor:
        return self.rnn.initial_state(batch)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_frame(self) -> int:
        """Recurrent stack only (the head adds ``head_macs`` where it runs every frame)."""
        return self.rnn.macs_per_frame()

    def head_macs(self) -> int:
        return self.head.in_features * self.head.out_features


def build_model(config: ModelConfig) -> KeywordModel:
    """The one model factory: ``ghost-gru``, ``gru``, ``ghost-lstm`` or ``lstm``, by arch."""
    return KeywordModel(config)
