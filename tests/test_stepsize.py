"""DensityStepSize (minimax's ``finetune_step``): a pruned layer's Adam step is scaled by ``density ** -alpha``."""
import pytest
import torch

from rccsnn.errors import UserError
from rccsnn.masks import apply_masks, set_straight_through
from rccsnn.methods.minimax import Minimax
from rccsnn.methods.stepsize import STEP_RULES, DensityStepSize
from tests.test_methods import masked_linears


def pruned_pair(seed: int = 0):
    """Two masked Linear targets: the first at density 1/4, the second dense."""
    g = torch.Generator().manual_seed(seed)
    targets = masked_linears(torch.randn(4, 8, generator=g), torch.randn(3, 4, generator=g))
    mask = torch.zeros(4, 8)
    mask.view(-1)[::4] = 1.0
    targets[0].mask.mask.copy_(mask)
    apply_masks(targets)
    set_straight_through(targets, False)
    return targets


def adam_step(targets, lr: float, stepsize=None, lrs=None) -> None:
    """One Adam step on a fixed loss; ``lrs`` gives each target its own learning rate instead."""
    params = [t.weight for t in targets]
    groups = [{"params": [p], "lr": lr if lrs is None else l} for p, l in zip(params, lrs or [lr] * len(params))]
    opt = torch.optim.Adam(groups, lr=lr, weight_decay=0.01)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    loss = (targets[1].module(torch.tanh(targets[0].module(x))) ** 2).sum()
    loss.backward()
    if stepsize is not None:
        stepsize.before_step()
    opt.step()
    if stepsize is not None:
        stepsize.after_step()


def test_factors_are_density_to_the_minus_alpha_and_one_for_dense_layers():
    targets = pruned_pair()
    assert DensityStepSize(targets, 0.5).factors() == pytest.approx([2.0, 1.0])
    assert DensityStepSize(targets, 1.0).factors() == pytest.approx([4.0, 1.0])
    targets[0].mask.mask.zero_()  # an empty layer has nothing to move: no factor
    assert DensityStepSize(targets, 0.5).factors() == [1.0, 1.0]


def test_the_scaled_step_is_adam_with_the_layers_learning_rate_times_its_factor():
    scaled, reference = pruned_pair(), pruned_pair()
    adam_step(scaled, 1e-2, DensityStepSize(scaled, STEP_RULES["sqrt_density"]))
    adam_step(reference, 1e-2, lrs=[2e-2, 1e-2])  # density 1/4 -> factor 2; the dense layer keeps the run's rate
    for a, b in zip(scaled, reference):
        assert torch.allclose(a.weight, b.weight, rtol=0, atol=1e-6)
    unscaled = pruned_pair()
    adam_step(unscaled, 1e-2)
    assert not torch.allclose(scaled[0].weight, unscaled[0].weight, atol=1e-4)  # it did change the step


def test_rule_none_leaves_the_step_alone_and_keeps_no_copy():
    a, b = pruned_pair(), pruned_pair()
    rule = DensityStepSize(a, STEP_RULES["none"])
    adam_step(a, 1e-2, rule)
    adam_step(b, 1e-2)
    assert rule._before is None
    for x, y in zip(a, b):
        assert torch.equal(x.weight, y.weight)


def test_minimax_option_is_checked():
    with pytest.raises(UserError, match="unknown finetune_step 'cubic'; choices: none, sqrt_density"):
        Minimax(finetune_step="cubic")
