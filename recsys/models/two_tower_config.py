"""Hyperparameters of the two-tower model, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from recsys.errors import ConfigError


@dataclass
class TwoTowerConfig:
    """Hyperparameters of the two-tower model and its training."""

    dim: int = 100
    max_len: int = 20
    n_layers: int = 1
    n_heads: int = 2
    dropout: float = 0.2
    temperature: float = 0.07
    n_buckets: int = 2**16
    n_tokens: int = 16
    use_users: bool = True
    loss: str = "sampled"
    n_sampled: int = 4096
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    patience: int = 1
    valid_fraction: float = 0.05
    max_valid_cases: int = 20_000
    max_minutes: float | None = None
    log_every: int = 100
    seed: int = 42

    def validate(self) -> None:
        if self.loss not in ("full", "sampled"):
            raise ConfigError(
                f"invalid loss {self.loss!r}; expected 'full' or 'sampled'"
            )
        if self.dim % self.n_heads:
            raise ConfigError(
                f"dim {self.dim} is not divisible by n_heads {self.n_heads}; "
                "choose n_heads that divides dim"
            )
        for name in ("dim", "max_len", "batch_size", "epochs", "n_buckets"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(
                f"valid_fraction must be in [0, 1), got {self.valid_fraction}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
