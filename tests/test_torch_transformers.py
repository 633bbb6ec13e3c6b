"""Acceptance tests on Hugging Face GPT-2 and BERT (small configs, random weights), against the public API.

``checkpoint_modules`` on ``model.h`` / ``model.encoder.layer`` leaves the model's own forward
(attention masks, position ids, caches off) unchanged; the blocks also run as adapter-free
closures in ``CheckpointedSequential`` and ``checkpoint_sequential``. Every strategy,
float64, bitwise equal to plain autograd on a deep copy, with dropout off and on (masks
equal: same seed, replayed on recomputation). Skipped without ``transformers``.
"""

import copy
from functools import partial

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ckpt  # noqa: E402

from .conftest_torch import (STRATEGIES, Counted, assert_equal_out, assert_same_step, forward_steps,  # noqa: E402
                             global_hook_state, hook_state, single_thread, train_step)  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS, WIDTH, SEQ = 4, 16, 8
DROPOUTS = {"no_dropout": 0.0, "dropout": 0.1}


def gpt2(dropout: float, seed: int = 0):
    """A 4-block GPT-2 (default attention implementation), float64, train mode."""
    config = transformers.GPT2Config(vocab_size=50, n_positions=SEQ, n_embd=WIDTH, n_layer=LAYERS, n_head=2,
                                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2Model(config).double().train()


def bert(dropout: float, seed: int = 0):
    """A 3-layer BERT with its pooler (eager attention), float64, train mode."""
    config = transformers.BertConfig(vocab_size=50, hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=2 * WIDTH, max_position_embeddings=SEQ,
                                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                                     attn_implementation="eager")
    torch.manual_seed(seed)
    return transformers.BertModel(config).double().train()


def padded_mask():
    """Attention mask of a batch of 2 whose second sequence ends in 3 padding tokens."""
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, -3:] = 0
    return mask


def embeddings(seed: int = 3):
    """Input embeddings as a leaf that requires grad (the input gradient is compared too)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, SEQ, WIDTH, generator=g, dtype=torch.float64).requires_grad_()


def gpt2_forward(model, mask):
    """The model's own forward on input embeddings, caches off."""
    return lambda e: model(inputs_embeds=e, attention_mask=mask, use_cache=False).last_hidden_state


def bert_forward(model, mask):
    """The model's own forward: (last hidden state, pooled output)."""
    def forward(e):
        out = model(inputs_embeds=e, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output
    return forward


MODELS = {"gpt2": (gpt2, gpt2_forward, lambda m: m.h), "bert": (bert, bert_forward, lambda m: m.encoder.layer)}


@pytest.mark.parametrize("dropout", DROPOUTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_modules_on_blocks_equals_plain(name, strategy, dropout):
    make, forward, blocks_of = MODELS[name]
    model = make(DROPOUTS[dropout])
    plain, mask, e = copy.deepcopy(model), padded_mask(), embeddings()
    before, global_before = hook_state(model), global_hook_state()
    handle = ckpt.checkpoint_modules(blocks_of(model), strategy=strategy)
    assert_same_step(train_step(forward(model, mask), model, e), train_step(forward(plain, mask), plain, e))
    assert forward_steps(handle) == ckpt.make_schedule(strategy, len(blocks_of(model))).forward_steps

    ckpt.remove_checkpointing(model)
    assert hook_state(model) == before
    assert global_hook_state() == global_before
    assert_same_step(train_step(forward(model, mask), model, e, seed=2),
                     train_step(forward(plain, mask), plain, e, seed=2))


@pytest.mark.parametrize("name", MODELS)
def test_prediction_with_blocks_checkpointed(name):
    """eval() + no_grad gives plain's output; train() + no_grad draws the same dropout masks."""
    make, forward, blocks_of = MODELS[name]
    model = make(0.1)
    plain, mask, e = copy.deepcopy(model), padded_mask(), embeddings().detach()
    with torch.no_grad(), ckpt.checkpoint_modules(blocks_of(model), strategy="sqrt_n"):
        torch.manual_seed(4)
        got = forward(model, mask)(e)
        torch.manual_seed(4)
        assert_equal_out(got, forward(plain, mask)(e))
        model.eval()
        plain.eval()
        assert_equal_out(forward(model, mask)(e), forward(plain, mask)(e))


def block_call_arguments(model, mask, e):
    """The positional and keyword arguments GPT-2's forward passes to its blocks (mask, position ids …)."""
    seen = {}
    hook = model.h[0].register_forward_pre_hook(lambda m, args, kwargs: seen.update(args=args[1:], kwargs=kwargs),
                                                with_kwargs=True)
    try:
        with torch.no_grad():
            gpt2_forward(model, mask)(e)
    finally:
        hook.remove()
    return seen["args"], seen["kwargs"]


def call_block(block, args, kwargs, hidden):
    """One GPT-2 block as the model's forward calls it."""
    return block(hidden, *args, **kwargs)


def gpt2_closure_stages(model, mask, e) -> list:
    """GPT-2's forward as a chain of adapter-free callables: embeddings+dropout, the blocks, ln_f."""
    args, kwargs = block_call_arguments(model, mask, e)
    position_ids = kwargs["position_ids"]
    return [lambda x: model.drop(x + model.wpe(position_ids)),
            *(partial(call_block, block, args, kwargs) for block in model.h), model.ln_f]


@pytest.mark.parametrize("dropout", DROPOUTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gpt2_closures_in_checkpointed_sequential(strategy, dropout):
    model = gpt2(DROPOUTS[dropout])
    plain, mask, e = copy.deepcopy(model), padded_mask(), embeddings()
    stages = gpt2_closure_stages(model, mask, e)
    wrapper = ckpt.CheckpointedSequential(stages, strategy=strategy)
    assert_same_step(train_step(wrapper, model, e), train_step(gpt2_forward(plain, mask), plain, e))
    assert forward_steps(wrapper) == ckpt.make_schedule(strategy, len(stages)).forward_steps


@pytest.mark.parametrize("segments", [2, 3])
def test_gpt2_closures_in_checkpoint_sequential(segments):
    model = gpt2(0.1)
    plain, mask, e = copy.deepcopy(model), padded_mask(), embeddings()
    calls = [0]
    stages = [Counted(s, calls) for s in gpt2_closure_stages(model, mask, e)]
    got = train_step(lambda x: ckpt.checkpoint_sequential(stages, segments, x), model, e)
    assert_same_step(got, train_step(gpt2_forward(plain, mask), plain, e))
    assert calls[0] == ckpt.every_segment(len(stages), segments).forward_steps


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gpt2_called_with_its_default_cache(strategy):
    """Training code often leaves ``use_cache`` at the config's default (True): the blocks then append
    to a cache. A recomputation must not append again; gradients equal plain's, or a clear ckpt error
    that names the cache (never a shape error from deep inside attention, never a wrong number)."""
    model = gpt2(0.0)
    plain, mask, e = copy.deepcopy(model), padded_mask(), embeddings()

    def forward(m):
        return lambda x: m(inputs_embeds=x, attention_mask=mask).last_hidden_state
    ref = train_step(forward(plain), plain, e)
    with ckpt.checkpoint_modules(model.h, strategy=strategy):
        try:
            got = train_step(forward(model), model, e)
        except Exception as error:  # noqa: BLE001 (the message is the specification)
            message = str(error).lower()
            assert "ckpt" in message and "cache" in message, f"unclear error: {type(error).__name__}: {error}"
            return
    assert_same_step(got, ref)
