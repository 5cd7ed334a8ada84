"""The fused LM head + cross-entropy: the Triton kernels (run by Triton's CPU interpreter, TRITON_INTERPRET=1)
against the chunked torch path, which tests/test_model.py checks against full-logits autograd; and the
`head_implementation` switch."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tdlm import TDLMConfig, TDLMForMaskedDiffusion, fused_cross_entropy

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: TRITON_INTERPRET must be set before the kernels are decorated.
INTERPRETED_CHECKS = textwrap.dedent("""
    import torch
    import triton
    from tdlm import TDLMConfig, TDLMForMaskedDiffusion
    from tdlm import fused_cross_entropy
    from tdlm.fused_cross_entropy import _TritonLinearCrossEntropy, linear_cross_entropy

    # The interpreter has no timer to autotune with: every kernel gets one fixed tile per shape. The logits kernels
    # (forward, wide-head logits gradient) get [32, 64] tiles and 64-wide K slices, so that the K-loop runs several
    # times, with a partial last slice at odd widths; the fused backward kernels the hand-picked [64, 128], or [32, 64]
    # for hidden sizes above 128 as the on-chip pruning would keep, and the d W kernel two row splits so that the split
    # path runs. The autotuner runs a single surviving candidate without timing it.
    tiles_run = set()

    def fixed_tile(kernel_name):
        def prune(configs, named_args, **kwargs):
            if "BLOCK_K" in configs[0].kwargs:
                tile = {"BLOCK_M": 32, "BLOCK_V": 64, "BLOCK_K": 64}
            else:
                wide = kwargs["BLOCK_D"] > 128
                tile = {"BLOCK_M": 32 if wide else 64, "BLOCK_V": 64 if wide else 128}
            if "ROW_SPLITS" in configs[0].kwargs:
                tile["ROW_SPLITS"] = 2
            tiles_run.add((kernel_name, *tile.values()))
            return [triton.Config(tile, num_warps=configs[0].num_warps, num_stages=configs[0].num_stages)]
        return prune

    for name, prune in (("_forward_kernel", fused_cross_entropy._k_tile_within_hidden),
                        ("_grad_logits_kernel", fused_cross_entropy._k_tile_within_hidden),
                        ("_grad_rows_kernel", fused_cross_entropy._fits_on_chip),
                        ("_grad_weight_kernel", fused_cross_entropy._fits_on_chip)):
        kernel = getattr(fused_cross_entropy, name)
        assert len(kernel.configs) > 1 and kernel.early_config_prune is prune
        kernel.early_config_prune = fixed_tile(name)
    # the interpreter runs the kernels on CPU tensors: let head_implementation="triton" reach them there
    fused_cross_entropy.triton_head_applies = lambda rows: True
    # wide heads: logits-gradient chunks of 27 rows at vocabulary 300 in fp32 (several chunks, a partial last one)
    fused_cross_entropy.GRAD_LOGITS_CHUNK_BYTES = 2**15

    def run(implementation, rows, weight, targets, coefficients, mask_id, autocast_dtype=None, grad_scale=3.0):
        rows = rows.detach().clone().requires_grad_()
        weight = weight.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float16, enabled=autocast_dtype is not None):
            if implementation == "triton":
                loss, losses, predictions = _TritonLinearCrossEntropy.apply(rows, weight, targets, coefficients,
                                                                            mask_id)
            else:
                loss, losses, predictions = linear_cross_entropy(rows, weight, targets, coefficients, mask_id,
                                                                 "chunked", chunk_size=32)
        (loss * grad_scale).backward()
        return loss.detach(), losses, predictions, rows.grad, weight.grad

    def relative(a, b):
        return float((a - b).norm() / b.norm())

    # widths 24 (one partial K slice), 128 (fused backward), 384, 768 (logits-gradient backward, 6 and 12 K slices);
    # odd sizes: 70 rows (not a multiple of the row tiles), vocab 300 (not a multiple of the vocabulary tiles), the
    # mask token inside the vocabulary
    for hidden in (24, 128, 384, 768):
        torch.manual_seed(0)
        rows, weight = torch.randn(70, hidden), torch.randn(300, hidden) * 2 / hidden ** 0.5
        targets, coefficients = torch.randint(0, 299, (70,)), torch.rand(70) / 70
        mask_id = 150
        targets[targets == mask_id] = 0
        triton_out = run("triton", rows, weight, targets, coefficients, mask_id)
        chunked_out = run("chunked", rows, weight, targets, coefficients, mask_id)
        for name, a, b in zip(("loss", "token_losses", "predictions", "grad_rows", "grad_weight"), triton_out,
                              chunked_out):
            assert a.shape == b.shape and a.dtype == b.dtype, (name, hidden, a.shape, b.shape, a.dtype, b.dtype)
            if name == "predictions":
                assert torch.equal(a, b), (name, hidden)
            else:  # fp32 throughout: only summation order differs
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{name} at width {hidden}")
        assert int((triton_out[2] == mask_id).sum()) == 0  # the mask token is never predicted
        assert float(triton_out[4][mask_id].abs().max()) == 0.0  # and gets no gradient

    # tile edge cases: rows and vocabulary exact multiples of the tiles, fewer rows than a tile, the hidden size 256
    # tiling of the fused backward (BLOCK_M 32, BLOCK_V 64), a partial last K slice after several, zero coefficients
    for n_rows, hidden, vocab in ((64, 128, 256), (5, 256, 130), (130, 40, 128), (33, 360, 130)):
        rows, weight = torch.randn(n_rows, hidden), torch.randn(vocab, hidden) * 0.2
        targets, coefficients = torch.randint(0, vocab - 1, (n_rows,)), torch.rand(n_rows)
        coefficients[::3] = 0.0
        for name, a, b in zip(("loss", "token_losses", "predictions", "grad_rows", "grad_weight"),
                              run("triton", rows, weight, targets, coefficients, vocab - 1),
                              run("chunked", rows, weight, targets, coefficients, vocab - 1)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"{name} at {(n_rows, hidden, vocab)}")

    # fp16 autocast: both paths round the logits gradient to fp16 (eps 2^-11 ~ 4.9e-4); the chunked path also
    # rounds the logits themselves, the kernels keep them in fp32. Bound: a few eps, relative. Both backward kernels.
    eps = 2.0 ** -11
    for hidden in (128, 384):
        rows, weight = torch.randn(130, hidden), torch.randn(520, hidden) * 1.1 / hidden ** 0.5
        targets, coefficients = torch.randint(4, 520, (130,)), torch.rand(130) / 130
        triton_out = run("triton", rows, weight, targets, coefficients, 3, torch.float16)
        chunked_out = run("chunked", rows, weight, targets, coefficients, 3, torch.float16)
        assert relative(triton_out[1], chunked_out[1]) < 4 * eps, hidden
        assert relative(triton_out[3], chunked_out[3]) < 4 * eps and relative(triton_out[4], chunked_out[4]) < 4 * eps
        assert float((triton_out[2] == chunked_out[2]).float().mean()) > 0.95  # argmax may flip on near-ties

    # no supervised rows: zero loss and zero gradients, no kernel launch on an empty grid
    for hidden in (128, 384):  # both backward kernels
        empty = run("triton", torch.zeros(0, hidden), torch.randn(520, hidden), targets[:0], coefficients[:0], 3)
        assert float(empty[0]) == 0.0 and empty[1].numel() == 0 and float(empty[4].abs().sum()) == 0.0

    # end to end: the same model with head_implementation "triton" and "chunked" gives the same loss and gradients,
    # narrow (fused backward) and wide (logits-gradient backward)
    launches = []
    original_apply = _TritonLinearCrossEntropy.apply
    _TritonLinearCrossEntropy.apply = lambda *args: launches.append(1) or original_apply(*args)
    for hidden in (32, 288):
        results = {}
        for implementation in ("chunked", "triton"):
            torch.manual_seed(0)
            config = TDLMConfig(vocab_size=97, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=2 * hidden, max_position_embeddings=64, mask_token_id=96,
                                pad_token_id=0, bos_token_id=0, eos_token_id=0, head_implementation=implementation)
            model = TDLMForMaskedDiffusion(config)
            ids = torch.randint(1, 96, (3, 20), generator=torch.Generator().manual_seed(1))
            masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.5
            output = model(ids.masked_fill(masked, 96), labels=ids.masked_fill(~masked, -100),
                           loss_weights=torch.full(ids.shape, 2.0), num_items_in_batch=ids.numel())
            output.loss.backward()
            with torch.no_grad():  # the evaluation path (forward kernel only)
                scored = model(ids.masked_fill(masked, 96), labels=ids.masked_fill(~masked, -100))
            results[implementation] = (output.loss.detach(), output.token_predictions, scored.token_losses,
                                       {n: p.grad for n, p in model.named_parameters()})
        (loss_c, pred_c, eval_c, grads_c), (loss_t, pred_t, eval_t, grads_t) = results["chunked"], results["triton"]
        torch.testing.assert_close(loss_t, loss_c, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(eval_t, eval_c, atol=1e-5, rtol=1e-5)
        assert torch.equal(pred_t, pred_c)
        for name in grads_c:
            torch.testing.assert_close(grads_t[name], grads_c[name], atol=1e-5, rtol=1e-4, msg=f"{name} at {hidden}")
    assert len(launches) == 4  # the "triton" models' training and evaluation calls ran the kernels
    assert tiles_run == {("_forward_kernel", 32, 64, 64), ("_grad_logits_kernel", 32, 64, 64),
                         ("_grad_rows_kernel", 64, 128), ("_grad_rows_kernel", 32, 64),
                         ("_grad_weight_kernel", 64, 128, 2), ("_grad_weight_kernel", 32, 64, 2)}, tiles_run
    print("interpreted checks passed")
""")


def test_triton_kernels_match_the_chunked_head_under_the_interpreter():
    pytest.importorskip("triton", reason="Triton ships for Linux x86_64 only; the kernels exist only where it does")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", INTERPRETED_CHECKS], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "interpreted checks passed" in result.stdout


def test_head_implementation_is_validated():
    with pytest.raises(ValueError, match="TDLMConfig.head_implementation"):
        TDLMConfig(head_implementation="cuda")
    with pytest.raises(ValueError, match="head_implementation"):
        fused_cross_entropy.linear_cross_entropy(torch.zeros(1, 4), torch.zeros(3, 4), torch.zeros(1, dtype=torch.long),
                                                 torch.ones(1), None, "fast")


def test_triton_head_falls_back_to_chunked_off_cuda(monkeypatch):
    """On CPU tensors "triton" runs the chunked path: same numbers, no kernel call."""
    calls = []
    monkeypatch.setattr(fused_cross_entropy._TritonLinearCrossEntropy, "apply",
                        lambda *args: calls.append(args) or None)
    losses = {}
    for implementation in ("chunked", "triton"):
        torch.manual_seed(0)
        model = TDLMForMaskedDiffusion(TDLMConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=32, mask_token_id=49,
                                                  pad_token_id=0, bos_token_id=0, eos_token_id=0,
                                                  head_implementation=implementation))
        ids = torch.randint(1, 49, (2, 8), generator=torch.Generator().manual_seed(1))
        losses[implementation] = model(ids.masked_fill(ids % 2 == 0, 49),
                                       labels=ids.masked_fill(ids % 2 == 1, -100)).loss
    assert not calls
    assert torch.equal(losses["triton"], losses["chunked"])
    assert fused_cross_entropy.triton_head_applies(torch.zeros(2, 16)) is False


def test_triton_head_without_triton_warns_and_runs_chunked(monkeypatch):
    """"triton" is the default head: where the kernels would run but Triton is missing, the chunked head trains."""
    monkeypatch.setattr(fused_cross_entropy, "triton", None)

    def cuda_rows(hidden):  # what triton_head_applies reads of a CUDA tensor, without a GPU
        return SimpleNamespace(shape=(2, hidden), is_cuda=True)

    with pytest.warns(UserWarning, match="needs the `triton` package"):
        assert fused_cross_entropy.triton_head_applies(cuda_rows(16)) is False
    monkeypatch.undo()
    if fused_cross_entropy.triton is not None:  # with Triton, CUDA rows of any width run the kernels
        assert fused_cross_entropy.triton_head_applies(cuda_rows(2048)) is True


def test_autotune_candidates_fit_on_chip_for_wide_hidden_sizes():
    """Fused backward at hidden sizes 129-256 keeps only [32, 64] tiles (the [BLOCK, hidden] operands and fp32 logits
    tile must stay on chip); up to 128 every candidate is tried, the hand-picked shape first."""
    pytest.importorskip("triton")
    for tiles in (fused_cross_entropy._ROW_BLOCK_TILES, fused_cross_entropy._VOCAB_BLOCK_TILES):
        configs = fused_cross_entropy._configs(tiles, ("BLOCK_M", "BLOCK_V"))
        assert fused_cross_entropy._fits_on_chip(configs, {}, BLOCK_D=128) == configs
        wide = fused_cross_entropy._fits_on_chip(configs, {}, BLOCK_D=256)
        assert wide and all((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_V"]) == (32, 64) for c in wide)
        assert (configs[0].kwargs["BLOCK_M"], configs[0].kwargs["BLOCK_V"]) == (64, 128)


def test_logits_kernels_cap_their_k_slice_at_the_hidden_size():
    """The K-looped kernels try every candidate at wide hidden sizes; at narrow ones a K slice wider than the padded
    hidden size would only load padding, so it is capped."""
    pytest.importorskip("triton")
    configs = fused_cross_entropy._configs(fused_cross_entropy._LOGITS_TILES, ("BLOCK_M", "BLOCK_V", "BLOCK_K"))
    assert fused_cross_entropy._k_tile_within_hidden(configs, {}, hidden_size=2048) == configs
    narrow = fused_cross_entropy._k_tile_within_hidden(configs, {}, hidden_size=24)
    assert {c.kwargs["BLOCK_K"] for c in narrow} == {32} and len(narrow) == len(configs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton kernels need a CUDA GPU; "
                    "scripts/gpu_checks.sh runs this first, the interpreter test above covers the same code on CPU")
@pytest.mark.parametrize("hidden", [128, 768, 2048])
def test_compiled_triton_kernels_match_the_chunked_head_on_cuda(hidden):
    """The kernels as compiled for the GPU (not interpreted) at the real head shape (vocabulary 50,258), fp32 and bf16
    autocast: width 128 runs the fused backward, 768 and 2048 the logits-gradient one."""
    pytest.importorskip("triton")

    def run(implementation, rows, weight, targets, coefficients, dtype):
        rows, weight = rows.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss, losses, predictions = fused_cross_entropy.linear_cross_entropy(
                rows, weight, targets, coefficients, 50257, implementation, chunk_size=1024)
        loss.backward()
        return losses, predictions, rows.grad, weight.grad

    def relative(a, b):
        return float((a - b).norm() / b.norm())

    generator = torch.Generator("cuda").manual_seed(0)
    rows = torch.randn(4100, hidden, device="cuda", generator=generator)  # not a multiple of the row tile
    weight = torch.randn(50258, hidden, device="cuda", generator=generator) * 0.6 / hidden ** 0.5
    targets = torch.randint(0, 50257, (4100,), device="cuda", generator=generator)
    coefficients = torch.rand(4100, device="cuda", generator=generator) / 4100
    # fp32 (ieee dot products): only the summation order differs
    (losses_t, pred_t, rows_t, weight_t), (losses_c, pred_c, rows_c, weight_c) = (
        run(implementation, rows, weight, targets, coefficients, None) for implementation in ("triton", "chunked"))
    torch.testing.assert_close(losses_t, losses_c, rtol=1e-5, atol=1e-5)
    assert float((pred_t == pred_c).float().mean()) > 0.999  # argmax may flip on exact near-ties only
    assert relative(rows_t, rows_c) < 1e-4 and relative(weight_t, weight_c) < 1e-4
    # bf16 autocast: the chunked path rounds logits to bf16 (eps 2^-8), the kernels accumulate them in fp32; both
    # round the logits gradient to bf16 for the two matmuls. Bound: a few eps, relative.
    bf16_eps = 2.0 ** -8
    (losses_t, pred_t, rows_t, weight_t), (losses_c, pred_c, rows_c, weight_c) = (
        run(implementation, rows, weight, targets, coefficients, torch.bfloat16)
        for implementation in ("triton", "chunked"))
    assert relative(losses_t, losses_c) < 4 * bf16_eps
    assert relative(rows_t, rows_c) < 4 * bf16_eps and relative(weight_t, weight_c) < 4 * bf16_eps
    assert float((pred_t == pred_c).float().mean()) > 0.95
