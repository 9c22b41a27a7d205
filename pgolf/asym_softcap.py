"""#1923's asymmetric logit softcap (model.asym_logit_rescale, #2123/#2164): at eval and in TTT the logits are
capped by two learned scalars, cap_pos above zero and cap_neg below, each starting at model.logit_softcap (so the
model begins equal to the fixed softcap); training keeps the fixed cap, and the caps sit in no optimizer group.

    capped = asym_softcap(logits, model.softcap_pos.float(), model.softcap_neg.float())
"""

import torch
import torch.nn as nn


def add_logit_caps(model):
    """The model's softcap_pos and softcap_neg parameters, each at its logit_softcap."""
    model.softcap_pos = nn.Parameter(torch.tensor(float(model.config.logit_softcap)))
    model.softcap_neg = nn.Parameter(torch.tensor(float(model.config.logit_softcap)))


def asym_softcap(logits: torch.Tensor, cap_pos: torch.Tensor, cap_neg: torch.Tensor) -> torch.Tensor:
    return torch.where(logits > 0, cap_pos * torch.tanh(logits / cap_pos), cap_neg * torch.tanh(logits / cap_neg))
