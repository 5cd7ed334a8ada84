"""Model behaviour: attention direction, padding, the mask token, attention paths, checkpointing, the loss
path (chunked head) and the causal model's cached generate()."""

import pytest
import torch
import torch.nn.functional as F

from tdlm import TDLMConfig, TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.modeling_tdlm import supervised_loss

VOCAB, MASK_ID, PAD_ID = 97, 96, 0


def tiny_config(mode="diffusion", **kwargs):
    values = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, mask_token_id=MASK_ID, pad_token_id=PAD_ID, bos_token_id=PAD_ID,
                  eos_token_id=PAD_ID, training_mode=mode)
    values.update(kwargs)
    return TDLMConfig(**values)


def tiny_model(mode="diffusion", seed=0, **kwargs):
    torch.manual_seed(seed)
    cls = TDLMForMaskedDiffusion if mode == "diffusion" else TDLMForCausalLM
    model = cls(tiny_config(mode, **kwargs)).eval()
    # a larger init than 0.02 so that every layer changes the logits visibly
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


def random_ids(batch, length, seed=1):
    return torch.randint(1, MASK_ID, (batch, length), generator=torch.Generator().manual_seed(seed))


MODES = ["diffusion", "autoregressive"]


def test_only_the_diffusion_model_sees_the_future():
    ids = random_ids(1, 8)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] % (MASK_ID - 1)) + 1
    for mode, sees_future in (("diffusion", True), ("autoregressive", False)):
        model = tiny_model(mode)
        with torch.no_grad():
            first = model(ids).logits[0, 0]
            first_changed = model(changed).logits[0, 0]
            last_differs = not torch.equal(model(ids).logits[0, -1], model(changed).logits[0, -1])
        assert last_differs
        finite = torch.isfinite(first)
        differs = (first[finite] - first_changed[finite]).abs().max() > 1e-4
        assert bool(differs) == sees_future, mode


@pytest.mark.parametrize("mode", MODES)
def test_padding_does_not_change_real_positions(mode):
    model = tiny_model(mode)
    ids = random_ids(1, 6)
    pad = torch.full((1, 3), PAD_ID)
    ones, zeros = torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        reference = model(ids).logits[0]
        right = model(torch.cat([ids, pad], 1), attention_mask=torch.cat([ones, zeros], 1)).logits[0, :6]
        left = model(torch.cat([pad, ids], 1), attention_mask=torch.cat([zeros, ones], 1)).logits[0, 3:]
        # both in one batch, next to a row of different length
        batch = torch.cat([torch.cat([ids, pad], 1), torch.cat([pad, ids], 1)])
        batch_mask = torch.cat([torch.cat([ones, zeros], 1), torch.cat([zeros, ones], 1)])
        batched = model(batch, attention_mask=batch_mask).logits
    finite = torch.isfinite(reference)
    for other in (right, left, batched[0, :6], batched[1, 3:]):
        assert torch.equal(torch.isfinite(other), finite)
        torch.testing.assert_close(other[finite], reference[finite], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_mask_token_is_never_predicted(mode):
    model = tiny_model(mode)
    with torch.no_grad():  # make the mask token the head's favourite everywhere
        model.lm_head.weight[MASK_ID] = 10.0 * model.model.norm.weight.sign()
        model.model.norm.weight.abs_()
    ids = random_ids(3, 10)
    ids[:, ::2] = MASK_ID
    with torch.no_grad():
        logits = model(ids).logits
        labels = ids.masked_fill(ids == MASK_ID, 5)
        out = model(ids, labels=labels, return_logits=True)
    assert torch.isneginf(logits[..., MASK_ID]).all()
    assert torch.isfinite(logits[..., :MASK_ID]).all()
    assert (logits.argmax(-1) != MASK_ID).all()
    assert (out.token_predictions != MASK_ID).all()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("mode", MODES)
def test_eager_attention_equals_sdpa_and_maps_are_distributions(mode):
    model = tiny_model(mode)
    ids = random_ids(2, 9)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0  # one left-padded row
    results = {}
    for impl in ("sdpa", "eager"):
        model.config._attn_implementation = impl
        with torch.no_grad():
            results[impl] = [model(ids).logits, model(ids, attention_mask=attention_mask).logits]
    for sdpa, eager in zip(results["sdpa"], results["eager"], strict=True):
        finite = torch.isfinite(sdpa)
        torch.testing.assert_close(eager[finite], sdpa[finite], atol=1e-5, rtol=1e-5)

    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        out = model(ids, attention_mask=attention_mask, output_attentions=True)
    finite = torch.isfinite(out.logits)
    torch.testing.assert_close(out.logits[finite], results["sdpa"][1][finite], atol=1e-5, rtol=1e-5)
    assert len(out.attentions) == model.config.num_hidden_layers
    for maps in out.attentions:
        assert maps.shape == (2, 4, 9, 9)
        torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 9), atol=1e-5, rtol=0)
        assert (maps[1, :, 3:, :3] == 0).all()  # real queries never attend to padding
        if mode == "autoregressive":
            assert (maps.triu(1) == 0).all()
        else:
            assert (maps[0].triu(1) > 0).any()


@pytest.mark.parametrize("mode", MODES)
def test_attention_dispatch_follows_the_config(mode, monkeypatch):
    """"eager" (or requested maps) runs eager_attention_forward; otherwise ALL_ATTENTION_FUNCTIONS[implementation],
    always told is_causal explicitly (sdpa would otherwise read module.is_causal)."""
    import tdlm.modeling_tdlm as modeling

    calls = []

    def counting(name, function):
        def attention(*args, **kwargs):
            calls.append((name, kwargs["is_causal"]))
            return function(*args, **kwargs)
        return attention

    monkeypatch.setattr(modeling, "eager_attention_forward", counting("eager", modeling.eager_attention_forward))
    monkeypatch.setattr(modeling, "ALL_ATTENTION_FUNCTIONS",
                        {"sdpa": counting("sdpa", modeling.ALL_ATTENTION_FUNCTIONS["sdpa"])})
    model = tiny_model(mode)
    ids = random_ids(2, 6)
    layers, causal = model.config.num_hidden_layers, mode == "autoregressive"
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        model(ids)
        assert calls == [("sdpa", causal)] * layers
        calls.clear()
        model(ids, output_attentions=True)
        assert calls == [("eager", causal)] * layers
        calls.clear()
        model(ids, attention_mask=torch.ones_like(ids))  # a mask is given: it carries causality, is_causal is False
        assert calls == [("sdpa", False)] * layers
        calls.clear()
        model.config._attn_implementation = "eager"
        model(ids)
        assert calls == [("eager", causal)] * layers


@pytest.mark.parametrize("mode", MODES)
def test_return_dict_false_gives_the_output_fields_as_a_tuple(mode):
    model = tiny_model(mode)
    ids = random_ids(2, 6)
    labels = ids.masked_fill(ids % 2 == 0, -100)
    inputs = ids.masked_fill(labels != -100, MASK_ID) if mode == "diffusion" else ids
    with torch.no_grad():
        as_dict = model(inputs, labels=labels, return_logits=True)
        as_tuple = model(inputs, labels=labels, return_logits=True, return_dict=False)
        logits_only, logits = model(inputs, return_dict=False), model(inputs).logits
        backbone, hidden = model.model(inputs, return_dict=False), model.model(inputs).last_hidden_state
        model.config.return_dict = False  # the config's default applies when return_dict is not given
        by_config = model(inputs)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for a, b in zip(as_tuple, as_dict.to_tuple(), strict=True):
        assert torch.equal(a, b)
    assert len(logits_only) == 1 and torch.equal(logits_only[0], logits)
    assert isinstance(backbone, tuple) and torch.equal(backbone[0], hidden)
    assert isinstance(by_config, tuple) and torch.equal(by_config[0], logits)


def _grads(model, ids, labels):
    model.zero_grad()
    model(ids, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("mode", MODES)
def test_gradient_checkpointing_gives_the_same_gradients(mode):
    model = tiny_model(mode).train()
    ids = random_ids(2, 8)
    labels = ids.clone()
    if mode == "diffusion":
        labels[:, ::2] = -100
        ids = ids.masked_fill(labels != -100, MASK_ID)
    plain = _grads(model, ids, labels)
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    calls = []
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    checkpointed = _grads(model, ids, labels)
    assert len(calls) == 2  # the layer ran again in the backward pass: checkpointing is really on
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_loss_equals_weighted_cross_entropy_of_full_logits(mode):
    """Diffusion: sum of ELBO-weighted CE / normaliser. Causal: the same with weight 1 (it takes no loss_weights)."""
    model = tiny_model(mode)
    ids = random_ids(3, 7)
    generator = torch.Generator().manual_seed(5)
    supervised = torch.rand(ids.shape, generator=generator) < 0.5
    supervised[0, 1] = True
    labels = ids.masked_fill(~supervised, -100)
    weights = torch.rand(ids.shape, generator=generator) * 3 + 0.5
    inputs = ids.masked_fill(supervised, MASK_ID) if mode == "diffusion" else ids
    num_items = torch.tensor(17)
    if mode == "diffusion":
        out = model(inputs, labels=labels, loss_weights=weights, num_items_in_batch=num_items)
    else:
        out = model(inputs, labels=labels, num_items_in_batch=num_items)
        weights = torch.ones_like(weights)
    assert out.logits is None
    logits = model(inputs).logits
    if mode == "autoregressive":  # position i predicts token i + 1
        logits, labels, weights = logits[:, :-1], labels[:, 1:], weights[:, 1:]
    positions = labels != -100
    ce = F.cross_entropy(logits[positions], labels[positions], reduction="none")
    torch.testing.assert_close(out.token_losses, ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.token_predictions, logits[positions].argmax(-1))
    torch.testing.assert_close(out.loss, (ce * weights[positions]).sum() / 17, atol=1e-5, rtol=1e-5)
    # without weights and normaliser: plain mean over supervised tokens
    unweighted = model(inputs, labels=labels if mode == "diffusion" else ids.masked_fill(~supervised, -100)).loss
    torch.testing.assert_close(unweighted, ce.mean(), atol=1e-5, rtol=1e-5)


def test_chunked_head_matches_unchunked_loss_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 11, 16, requires_grad=True)
    head = torch.randn(VOCAB, 16, requires_grad=True)
    labels = torch.randint(0, MASK_ID, (2, 11))
    labels[torch.rand(2, 11) < 0.3] = -100
    weights = torch.rand(2, 11) + 0.5
    results = []
    for chunk_size in (3, 10**6):
        loss, losses, predictions = supervised_loss(hidden, head, labels, weights, 13, MASK_ID, chunk_size=chunk_size)
        loss.backward()
        results.append((loss.detach(), losses.detach(), predictions, hidden.grad.clone(), head.grad.clone()))
        hidden.grad, head.grad = None, None
    (loss3, l3, p3, gh3, gw3), (loss_all, l_all, p_all, gh_all, gw_all) = results
    assert l3.numel() == int((labels != -100).sum()) > 3  # more than one chunk
    torch.testing.assert_close(loss3, loss_all)
    torch.testing.assert_close(l3, l_all)
    assert torch.equal(p3, p_all)
    torch.testing.assert_close(gh3, gh_all)
    torch.testing.assert_close(gw3, gw_all)
    # reference: autograd through the full logits
    positions = labels != -100
    logits = (hidden @ head.t()).index_fill(-1, torch.tensor([MASK_ID]), float("-inf"))
    ce = F.cross_entropy(logits[positions], labels[positions], reduction="none")
    reference = (ce * weights[positions]).sum() / 13
    reference.backward()
    torch.testing.assert_close(l3, ce.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss3, reference.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh3, hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw3, head.grad, atol=1e-5, rtol=1e-5)
    assert torch.equal(p3, logits[positions].argmax(-1))


def test_chunked_head_inside_the_model(monkeypatch):
    import tdlm.modeling_tdlm as modeling

    model = tiny_model("diffusion").train()
    ids = random_ids(2, 9)
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.4, -100)
    inputs = ids.masked_fill(labels != -100, MASK_ID)
    weights = torch.full(ids.shape, 2.0)
    reference = _grads_and_loss(model, inputs, labels, weights)
    original = modeling.supervised_loss
    calls = []

    def chunked(*args, **kwargs):
        calls.append(1)
        return original(*args, **{**kwargs, "chunk_size": 3})

    monkeypatch.setattr(modeling, "supervised_loss", chunked)
    result = _grads_and_loss(model, inputs, labels, weights)
    assert calls
    torch.testing.assert_close(result[0], reference[0])
    for name in reference[1]:
        torch.testing.assert_close(result[1][name], reference[1][name])


def _grads_and_loss(model, ids, labels, weights):
    model.zero_grad()
    loss = model(ids, labels=labels, loss_weights=weights, num_items_in_batch=ids.numel()).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_causal_generate_with_cache_equals_greedy_decoding_without_cache():
    model = tiny_model("autoregressive")
    prompt = random_ids(2, 4)
    with torch.no_grad():
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                   use_cache=True)
        ids = prompt
        for _ in range(8):
            next_token = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_token], 1)
    assert generated.shape == (2, 12)
    assert torch.equal(generated, ids)
    assert len(set(ids[:, 4:].flatten().tolist())) > 1  # not a degenerate constant continuation


def test_left_padded_batch_generate_equals_per_row_generate():
    model = tiny_model("autoregressive")
    long_prompt, short_prompt = random_ids(1, 6, seed=2), random_ids(1, 3, seed=3)
    batch = torch.cat([long_prompt, torch.cat([torch.full((1, 3), PAD_ID), short_prompt], 1)])
    attention_mask = torch.ones_like(batch)
    attention_mask[1, :3] = 0
    kwargs = dict(max_new_tokens=7, do_sample=False, pad_token_id=PAD_ID)
    with torch.no_grad():
        batched = model.generate(batch, attention_mask=attention_mask, **kwargs)
        single_long = model.generate(long_prompt, attention_mask=torch.ones_like(long_prompt), **kwargs)
        single_short = model.generate(short_prompt, attention_mask=torch.ones_like(short_prompt), **kwargs)
    assert torch.equal(batched[0], single_long[0])
    assert torch.equal(batched[1, 3:], single_short[0])
