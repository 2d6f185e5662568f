"""Learning-rate schedules (torch.optim.lr_scheduler's names). Each ``step()`` sets the
optimiser's device-side rate, so compiled steps pick it up without recompiling."""

from __future__ import annotations

import math
from typing import Any, Callable, List, Sequence

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearWarmup"]


def _at_least_one(value: int, what: str) -> int:
    if value < 1:
        raise ValueError(f"fluxion.optim.lr_scheduler.{what} must be >= 1")
    return int(value)


class LRScheduler:
    """Base: lr = factor(epoch) applied to the optimiser's initial rate; call step() once per
    epoch (or per iteration, as the schedule is meant)."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._apply()

    def get_lr(self) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        self.optimizer.lr = self.get_lr()

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [self.get_lr()]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, sd: dict) -> None:
        self.last_epoch, self.base_lr = int(sd["last_epoch"]), float(sd["base_lr"])
        self._apply()


class LambdaLR(LRScheduler):
    def __init__(self, optimizer: Any, lr_lambda: Callable[[int], float]) -> None:
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * float(self.lr_lambda(self.last_epoch))


class StepLR(LRScheduler):
    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1) -> None:
        self.step_size, self.gamma = _at_least_one(step_size, "StepLR: step_size"), float(gamma)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class MultiStepLR(LRScheduler):
    def __init__(self, optimizer: Any, milestones: Sequence[int], gamma: float = 0.1) -> None:
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        k = sum(1 for m in self.milestones if m <= self.last_epoch)
        return self.base_lr * self.gamma ** k


class ExponentialLR(LRScheduler):
    def __init__(self, optimizer: Any, gamma: float) -> None:
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** self.last_epoch


class CosineAnnealingLR(LRScheduler):
    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max, self.eta_min = _at_least_one(T_max, "CosineAnnealingLR: T_max"), float(eta_min)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        t = min(self.last_epoch, self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """lr rises linearly from base_lr * start_factor to base_lr over warmup_steps steps."""

    def __init__(self, optimizer: Any, warmup_steps: int, start_factor: float = 0.1) -> None:
        self.warmup_steps, self.start_factor = max(int(warmup_steps), 1), float(start_factor)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        f = min(self.last_epoch / self.warmup_steps, 1.0)
        return self.base_lr * (self.start_factor + (1 - self.start_factor) * f)
