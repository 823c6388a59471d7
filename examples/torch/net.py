"""The model's code: a small MLP scoring churn risk from three features. `build` is the factory that
job.toml names; the weights are loaded into it from model.safetensors."""

from __future__ import annotations

import torch


class ChurnNet(torch.nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x)).squeeze(1)  # [N] churn probabilities


def build(hidden: int = 16) -> ChurnNet:
    return ChurnNet(hidden)
