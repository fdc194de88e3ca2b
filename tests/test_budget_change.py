"""Paper 002's budget change in the filter family (filter, deprune, prune; also the level
``--adapt`` changes): a raised budget keeps every learnt logit, "without resetting other
parameters", and the maps it admits enter at a low filter value that the prune loss raises
step by step; a lowered one is paper 002's resetprune (tests/test_compression.py)."""
import pytest
import torch

from workloads.compression import CompressionConfig, create_source

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

CUT = (32, 8, 8)  # vgg11-slim at split 2
ON = [3, 9, 17, 28]  # the maps a budget of 4 learnt to send
LOW = 0.02  # an admitted map's filter value: sigmoid(-4) = 0.018


def trained_at_four(module="deprune"):
    """A source whose filter has settled at B=4: four maps on (not all saturated), the rest
    pruned to the logit floor or near it, where the sigmoid has no slope."""
    torch.manual_seed(0)
    source = create_source(module, CUT, CompressionConfig(program="source", budget=4))
    with torch.no_grad():
        source.logits.fill_(-15.0)
        source.logits[[0, 1, 2]] = torch.tensor([-14.2, -13.5, -12.0])
        source.logits[ON] = torch.tensor([15.0, 12.5, 9.25, 15.0])
    return source


def steps(source, count):
    """``count`` steps of the filter's own optimiser on the prune loss alone, as
    workloads/source.py takes them (extra_loss, before_step, step, after_step)."""
    optimizers = source.make_optimizers()
    seen = [source.filter().detach().clone()]
    for _ in range(count):
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        source.extra_loss().backward()
        source.before_step()
        for optimizer in optimizers:
            optimizer.step()
        source.after_step()
        seen.append(source.filter().detach().clone())
    return torch.stack(seen)


def test_a_raised_budget_keeps_the_maps_that_were_on_and_admits_the_others_low():
    source = trained_at_four()
    before = source.logits.detach().clone()
    source.set_budget(32)  # deprune's switch: all maps
    assert source.budget == 32
    assert torch.equal(source.logits[ON], before[ON])  # every logit of a map that was on, unchanged
    f = source.filter().detach()
    admitted = torch.ones(32, dtype=torch.bool)
    admitted[ON] = False
    assert bool((f[admitted] <= LOW).all())  # low: no map reaches the server at full strength
    slope = f * (1 - f)
    assert bool((slope[admitted] > 1e-3).all())  # off the floor: the prune loss can raise them


def test_a_partial_raise_admits_as_many_maps_as_it_adds_and_leaves_the_others_as_learnt():
    source = trained_at_four("filter")
    before = source.logits.detach().clone()
    source.set_budget(8)  # --adapt one level up
    changed = (source.logits != before).nonzero().flatten().tolist()
    assert len(changed) == 4 and not set(changed) & set(ON)
    assert {0, 1, 2} <= set(changed)  # the highest pruned logits first, then a draw among the floor
    assert bool((source.filter().detach()[changed] <= LOW).all())
    sent = torch.topk(source.filter().detach(), 8).indices.tolist()
    assert set(sent) == set(ON) | set(changed)  # the source sends the maps that fade in


def test_the_admitted_maps_fade_in_under_the_prune_loss():
    source = trained_at_four()
    source.set_budget(32)
    admitted = [i for i in range(32) if i not in ON]
    seen = steps(source, 20)
    rising = seen[1:, admitted] >= seen[:-1, admitted] - 1e-6
    assert bool(rising.all())  # every step raises them (none falls back)
    assert float(seen[2, admitted].max()) < 0.1  # a fade, not a jump
    assert bool((seen[-1, admitted] > 0.9).all())  # in at full strength within 20 steps
    assert bool((seen[:, ON] > 0.99).all())  # the maps that were on stay on
    assert float(seen[-1].sum()) > 31.0


def test_after_a_partial_raise_the_filter_settles_on_the_maps_it_sends():
    source = trained_at_four("filter")
    source.set_budget(8)
    sent = torch.topk(source.filter().detach(), 8).indices
    seen = steps(source, 20)
    rest = torch.ones(32, dtype=torch.bool)
    rest[sent] = False
    assert bool((seen[-1, sent] > 0.9).all()) and bool((seen[-1, rest] < 0.01).all())
    assert abs(float(seen[-1].sum()) - 8) < 0.1
