"""Acceptance tests on torchvision-structured ResNet-18 and MobileNetV2, against the public API.

Every strategy, float64, bitwise equal to plain autograd on a deep copy of the same model:
output, every parameter gradient, the input gradient, BatchNorm running statistics (updated
once per step), dropout masks (seeded), the RNG stream afterwards. ResNet's stem has a
standalone ``nn.ReLU(inplace=True)`` stage, which a wrapper may fuse with its predecessor, so
its step counts are checked against the wrapper's own ``.schedule``; MobileNetV2 and the
block chains of ``checkpoint_modules`` have no such stage and must match
``ckpt.make_schedule(strategy, n)`` exactly.
"""

import copy

import pytest

torch = pytest.importorskip("torch")

import ckpt  # noqa: E402

from .conftest_torch import (STRATEGIES, Counted, assert_equal_out, assert_same_step, forward_steps,  # noqa: E402
                             global_hook_state, hook_state, single_thread, train_step, weighted_loss)  # noqa: F401
from .torch_models import (image_batch, mobilenet_stages, mobilenet_v2, resnet18, resnet_blocks,  # noqa: E402
                           resnet_stages)

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = {"resnet18": (resnet18, resnet_stages, resnet_blocks),
          "mobilenet_v2": (mobilenet_v2, mobilenet_stages, lambda m: m.features)}
HAS_INPLACE_STAGE = {"resnet18": True, "mobilenet_v2": False}


def build(name):
    """(model, plain deep copy, stages of the model, blocks of the model)."""
    make, stages, blocks = MODELS[name]
    model = make()
    return model, copy.deepcopy(model), stages(model), list(blocks(model))


@pytest.mark.parametrize("input_grad", [True, False], ids=["x_grad", "x_frozen"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", MODELS)
def test_checkpointed_sequential_equals_plain(name, strategy, input_grad):
    model, plain, stages, _ = build(name)
    wrapper = ckpt.CheckpointedSequential(stages, strategy=strategy)
    x = image_batch(requires_grad=input_grad)
    ref = train_step(plain, plain, x)
    got = train_step(wrapper, model, x)
    assert_same_step(got, ref)
    assert forward_steps(wrapper) == wrapper.schedule.forward_steps
    if not HAS_INPLACE_STAGE[name]:
        assert forward_steps(wrapper) == ckpt.make_schedule(strategy, len(stages)).forward_steps


@pytest.mark.parametrize("segments", [1, 2, 4, 100])
@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_sequential_equals_plain(name, segments):
    model, plain, stages, _ = build(name)
    calls = [0]
    counted = [Counted(s, calls) for s in stages]
    x = image_batch()
    ref = train_step(plain, plain, x)
    got = train_step(lambda t: ckpt.checkpoint_sequential(counted, segments, t), model, x)
    assert_same_step(got, ref)
    if not HAS_INPLACE_STAGE[name]:
        assert calls[0] == ckpt.every_segment(len(stages), min(segments, len(stages))).forward_steps


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_modules_in_place_then_removed(name, strategy):
    model, plain, _, blocks = build(name)
    before, global_before = hook_state(model), global_hook_state()
    handle = ckpt.checkpoint_modules(blocks, strategy=strategy)
    x = image_batch()
    assert_same_step(train_step(model, model, x), train_step(plain, plain, x))
    assert forward_steps(handle) == ckpt.make_schedule(strategy, len(blocks)).forward_steps

    ckpt.remove_checkpointing(model)
    assert hook_state(model) == before
    assert global_hook_state() == global_before
    assert_same_step(train_step(model, model, x, seed=2), train_step(plain, plain, x, seed=2))


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_modules_as_context_manager(name):
    model, plain, _, blocks = build(name)
    before = hook_state(model)
    x = image_batch(requires_grad=False)
    handle = ckpt.checkpoint_modules(blocks, strategy="sqrt_n")
    with handle:
        assert_same_step(train_step(model, model, x), train_step(plain, plain, x))
        assert forward_steps(handle) == ckpt.make_schedule("sqrt_n", len(blocks)).forward_steps
    assert hook_state(model) == before
    assert_same_step(train_step(model, model, x, seed=3), train_step(plain, plain, x, seed=3))


def test_remove_checkpointing_accepts_the_block_list():
    model, plain, _, blocks = build("resnet18")
    before = hook_state(model)
    ckpt.checkpoint_modules(blocks, strategy="recompute")
    ckpt.remove_checkpointing(blocks)
    assert hook_state(model) == before
    x = image_batch()
    assert_same_step(train_step(model, model, x), train_step(plain, plain, x))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_sgd_steps_track_plain_training(strategy):
    """Parameters, BatchNorm statistics and the dropout stream stay equal over steps with an optimizer."""
    model, plain, _, blocks = build("mobilenet_v2")
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, plain)]
    with ckpt.checkpoint_modules(blocks, strategy=strategy):
        for step in range(2):
            x = image_batch(seed=10 + step)
            assert_same_step(train_step(model, model, x, seed=step), train_step(plain, plain, x, seed=step))
            for opt in opts:
                opt.step()
    for (n, p), p0 in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p, p0), n


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_forwards_before_one_backward(strategy):
    """A siamese-style loss calls the checkpointed model twice, then backwards once."""
    model, plain, _, blocks = build("mobilenet_v2")
    x = image_batch(batch=4)

    def forward(m):
        return lambda t: m(t[:2]) * m(t[2:])
    with ckpt.checkpoint_modules(blocks, strategy=strategy):
        assert_same_step(train_step(forward(model), model, x), train_step(forward(plain), plain, x))


def accumulated(model, xs) -> dict:
    """Parameter gradients and buffers after one backward per micro-batch, without zeroing in between."""
    for p in model.parameters():
        p.grad = None
    for x in xs:
        weighted_loss(model(x)).backward()
    return {**{n: p.grad for n, p in model.named_parameters()}, **dict(model.named_buffers())}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradient_accumulation_over_micro_batches(strategy):
    """Gradients accumulate over micro-batches as plain's do; BatchNorm statistics once per micro-batch."""
    model, plain, _, blocks = build("resnet18")
    xs = [image_batch(seed=20), image_batch(seed=21)]
    with ckpt.checkpoint_modules(blocks, strategy=strategy):
        got = accumulated(model, xs)
    ref = accumulated(plain, xs)
    assert [n for n, t in got.items() if not torch.equal(t, ref[n])] == []


def seeded(forward, x, seed=5):
    """``forward(x)`` from a fixed RNG state (the classifier's dropout draws the same mask)."""
    torch.manual_seed(seed)
    return forward(x)


def assert_same_buffers(model, plain):
    """BatchNorm running statistics equal: updated exactly as often as plain's."""
    for (n, b), b0 in zip(model.named_buffers(), plain.buffers()):
        assert torch.equal(b, b0), n


@pytest.mark.parametrize("name", MODELS)
def test_prediction_unaffected(name):
    """train() + no_grad (BatchNorm statistics updated once, dropout seeded), eval() + no_grad, eval() with grad."""
    model, plain, stages, blocks = build(name)
    wrapper = ckpt.CheckpointedSequential(stages, strategy="sqrt_n")
    x = image_batch(requires_grad=False)
    with torch.no_grad():
        assert_equal_out(seeded(wrapper, x), seeded(plain, x))
        assert_same_buffers(model, plain)
        with ckpt.checkpoint_modules(blocks, strategy="recompute"):
            assert_equal_out(seeded(model, x), seeded(plain, x))
            assert_same_buffers(model, plain)
            model.eval()
            plain.eval()
            assert_equal_out(model(x), plain(x))
        assert_equal_out(wrapper(x), plain(x))
    ref = train_step(plain, plain, x.requires_grad_())
    with ckpt.checkpoint_modules(blocks, strategy="sqrt_n"):    # eval mode with grad: a plain step
        assert_same_step(train_step(model, model, x), ref)
