"""Lookahead (Zhang et al. 2019) with the ramped pull of airbench (Jordan 2024).

Every `every` optimizer steps, slow weights move toward the trained ("fast") weights and the fast
weights are reset to them:  slow <- decay * slow + (1 - decay) * fast;  fast <- slow.
The decay ramps up over training, decay(t) = BASE ** every * (t / total) ** 3, so the first steps are
plain SGD and the last ones are averaged most. The last step of training always syncs, so the
weights that training ends with are the slow ones. What training changes takes part: the trained
parameters and the batch-norm running statistics. Fixed class vectors and frozen layers are left out,
so a fixed head gets no slow copy (it would never differ from the fast one).
"""

import torch
from torch import nn

BASE = 0.95  # per-step decay at the end of training (airbench's 0.95)


class Lookahead:
    def __init__(self, model: torch.nn.Module, every: int, total_steps: int):
        self.every, self.total, self.step_count = every, total_steps, 0
        statistics = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      for b in (m.running_mean, m.running_var) if b is not None]
        self._fast = [p.detach() for p in model.parameters() if p.requires_grad] + statistics
        self._slow = [v.detach().clone() for v in self._fast]

    def decay(self, step: int) -> float:
        return BASE ** self.every * (step / max(self.total, 1)) ** 3

    @torch.no_grad()
    def step(self):
        """Call after each optimizer step."""
        self.step_count += 1
        if self.step_count % self.every and self.step_count != self.total:
            return
        weight = 1.0 - self.decay(self.step_count)
        for slow, fast in zip(self._slow, self._fast):
            slow.lerp_(fast, weight)
            fast.copy_(slow)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "slow": [t.clone() for t in self._slow]}

    def load_state_dict(self, state: dict):
        self.step_count = state["step_count"]
        for slow, saved in zip(self._slow, state["slow"]):
            slow.copy_(saved)
