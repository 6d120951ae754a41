"""LFQ: values and gradients equal the reference (vector_quantize_pytorch), bounded memory, eval fast path."""

import math

import pytest
import torch
from vector_quantize_pytorch import LFQ as RefLFQ

import lfqtok
from lfqtok.tokenizers import lfq as lfq_module
from lfqtok.errors import UsageError
from lfqtok.tokenizers.lfq import LFQ, LossBreakdown, Return, pack_sign_bits, unpack_bits

SHAPES = {"image": (2, None, 3, 4), "video": (2, None, 2, 3, 3), "sequence": (2, 7, None)}


# helpers


def make_pair(**kwargs):
    """The reference and ours with the same (projection) weights; commitment weight set explicitly."""
    kwargs = {"commitment_loss_weight": 0.25, "diversity_gamma": 2.5, **kwargs}
    torch.manual_seed(0)
    ref = RefLFQ(**kwargs)
    ours = LFQ(**kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_input(kind, dim, seed=1, scale=0.1):
    shape = tuple(dim if s is None else s for s in SHAPES[kind])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def run(module, x, seed=None, **kwargs):
    """Forward + backward through every output; returns outputs, breakdown and the input gradient."""
    x = x.clone().requires_grad_()
    if seed is not None:
        torch.manual_seed(seed)
    (quantized, indices, aux), breakdown = module(x, return_loss_breakdown=True, **kwargs)
    weights = torch.randn(quantized.shape, generator=torch.Generator().manual_seed(2))
    (aux + (quantized * weights).sum() * 0.01).backward()
    return quantized.detach(), indices, aux.detach(), [t.detach() for t in breakdown], x.grad


def assert_same(ref_out, our_out):
    (q1, i1, a1, b1, g1), (q2, i2, a2, b2, g2) = ref_out, our_out
    assert q1.dtype == q2.dtype == torch.float32
    torch.testing.assert_close(q2, q1, rtol=1e-5, atol=1e-6)
    assert i1.shape == i2.shape and torch.equal(i1.long(), i2)
    for t1, t2 in zip(b1, b2):
        torch.testing.assert_close(t2, t1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a2, a1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g2, g1, rtol=1e-3, atol=2e-4 * g1.abs().max().item())


# equality with the reference


@pytest.mark.parametrize("bits", [1, 2, 3])
@pytest.mark.parametrize("inv_temperature", [100.0, 0.5])
def test_few_bits_match_reference(bits, inv_temperature):
    ref, ours = make_pair(codebook_size=2**bits)
    x = make_input("sequence", bits)
    assert_same(run(ref, x, inv_temperature=inv_temperature), run(ours, x, inv_temperature=inv_temperature))


@pytest.mark.parametrize("kind", ["image", "video", "sequence"])
@pytest.mark.parametrize("num_codebooks, keep", [(1, None), (1, True), (2, None)])
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("projected", [False, True])
def test_train_matches_reference(kind, num_codebooks, keep, scale, projected):
    bits = 6
    dim = 10 if projected else bits * num_codebooks
    kwargs = dict(dim=dim, codebook_size=2**bits, num_codebooks=num_codebooks, keep_num_codebooks_dim=keep)
    ref, ours = make_pair(**kwargs, codebook_scale=scale)
    x = make_input(kind, dim)
    assert_same(run(ref, x), run(ours, x))
    assert ours.has_projections == projected


def masked_tokens(x, mask):
    """(b, d, ...) or (b, n, d) input and (b, ...) mask -> (1, k, d): the selected tokens as one sequence."""
    tokens = x.movedim(1, -1) if x.ndim >= 4 else x
    return tokens[mask.reshape(tokens.shape[:-1])][None]


def aux_and_grad(module, x, seed=None, **kwargs):
    """Aux loss, its breakdown and the input gradient of the aux loss alone."""
    x = x.clone().requires_grad_()
    if seed is not None:
        torch.manual_seed(seed)
    (_, _, aux), breakdown = module(x, return_loss_breakdown=True, **kwargs)
    aux.backward()
    return [t.detach() for t in (aux, *breakdown)], x.grad


@pytest.mark.parametrize("kind", ["image", "sequence"])
@pytest.mark.parametrize("frac", [1.0, 0.5])
def test_mask_equals_reference_on_the_masked_tokens(kind, frac):
    # the reference's own mask path flattens tokens and codebooks together, so its batch entropy
    # degenerates to the per-sample one; ours equals the reference run on just the selected tokens
    ref, ours = make_pair(codebook_size=2**5, frac_per_sample_entropy=frac)
    x = make_input(kind, 5)
    spatial = x.shape[2:] if kind == "image" else x.shape[1:2]
    mask = torch.rand((x.shape[0], *spatial), generator=torch.Generator().manual_seed(3)) > 0.4
    expected, expected_grad = aux_and_grad(ref, masked_tokens(x, mask), seed=4)
    for user_mask in (mask, mask.reshape(x.shape[0], -1)):  # (b, h, w) and (b, n) masks
        values, grad = aux_and_grad(ours, x, seed=4, mask=user_mask)
        for got, want in zip(values, expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(masked_tokens(grad, mask), expected_grad, rtol=1e-3, atol=3e-5)  # fp32 sum order
        assert masked_tokens(grad, ~mask).abs().max() == 0


@pytest.mark.parametrize("frac", [0.25, 0.5])
@pytest.mark.parametrize("kind", ["video", "sequence"])
def test_frac_per_sample_entropy_same_draw_as_reference(frac, kind):
    ref, ours = make_pair(codebook_size=2**6, frac_per_sample_entropy=frac)
    x = make_input(kind, 6)
    assert_same(run(ref, x, seed=5), run(ours, x, seed=5))


def test_frac_per_sample_entropy_runs_on_sampled_tokens_only(monkeypatch):
    seen = []
    real = lfq_module.ClampedEntropy.apply
    monkeypatch.setattr(lfq_module.ClampedEntropy, "apply", lambda x, *a: seen.append(x.shape[0]) or real(x, *a))
    LFQ(codebook_size=2**4, frac_per_sample_entropy=0.25)(torch.randn(2, 4, 10, 10))
    assert seen == [50]


@pytest.mark.slow
@pytest.mark.parametrize("inv_temperature", [100.0, 3.0])
@pytest.mark.parametrize("chunked", [False, True])
def test_big_codebook_chunks_match_reference(monkeypatch, inv_temperature, chunked):
    if chunked:  # chunks of 70 tokens and of 70 (token, hi) rows, ragged at the end
        monkeypatch.setattr(lfq_module, "BLOCK_ELEMS", 2**7 * 70)
    ref, ours = make_pair(codebook_size=2**14)
    x = make_input("sequence", 14).expand(2, 7, 14).repeat(1, 30, 1)[:, :200] + torch.randn(2, 200, 14) * 0.05
    assert_same(run(ref, x, inv_temperature=inv_temperature), run(ours, x, inv_temperature=inv_temperature))


def test_entropy_saves_no_tokens_by_codes_tensor():
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        _, _, aux = LFQ(codebook_size=2**14)(torch.randn(1, 512, 14, requires_grad=True))
    aux.backward()
    assert max(saved) < 512 * 2**14 // 100  # the reference saves 512 x 2^14 probabilities


@pytest.mark.parametrize("keep", [None, True])
@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("kind", ["video", "sequence"])
def test_indices_to_codes_matches_reference_and_quantized(keep, projected, kind):
    dim = 9 if projected else 8
    ref, ours = make_pair(dim=dim, codebook_size=2**4, num_codebooks=2, keep_num_codebooks_dim=True)
    if keep is None:
        ref, ours = make_pair(dim=dim if projected else 4, codebook_size=2**4)
    ours.eval()
    x = make_input(kind, ours.dim)
    quantized, indices, _ = ours(x)
    for project_out in (True, False):
        codes = ours.indices_to_codes(indices, project_out=project_out)
        torch.testing.assert_close(codes, ref.indices_to_codes(indices, project_out=project_out))
    torch.testing.assert_close(ours.indices_to_codes(indices), quantized)


# eval


@pytest.mark.parametrize("kind", ["image", "video", "sequence"])
@pytest.mark.parametrize("num_codebooks, dim", [(1, 6), (2, 12), (1, 9)])
def test_eval_matches_reference(kind, num_codebooks, dim):
    ref, ours = make_pair(dim=dim, codebook_size=2**6, num_codebooks=num_codebooks)
    ref.eval(), ours.eval()
    x = make_input(kind, dim, scale=1.0)
    with torch.no_grad():
        (q1, i1, a1), b1 = ref(x, return_loss_breakdown=True)
        (q2, i2, a2), b2 = ours(x, return_loss_breakdown=True)
    torch.testing.assert_close(q2, q1)
    assert i2.dtype == torch.int64 and torch.equal(i2, i1.long())
    assert a2.item() == 0 and all(t.item() == 0 for t in b2)


def test_pack_sign_bits_msb_first_and_round_trip():
    x = torch.full((3, 18), -1.0)
    x[0, 0], x[1, 17], x[2] = 1.0, 1.0, 1.0
    assert pack_sign_bits(x).tolist() == [2**17, 1, 2**18 - 1]
    for bits in (1, 18, 31, 32, 62):  # int32 products up to 31 bits, int64 above
        x = torch.randn(4, 5, bits)
        indices = pack_sign_bits(x)
        assert indices.dtype == torch.int64 and indices.min() >= 0
        assert torch.equal(unpack_bits(indices, bits), x > 0)
    assert pack_sign_bits(torch.zeros(2, 3)).tolist() == [0, 0]  # 0 is a negative bit, as the reference
    video = torch.randn(2, 18, 3, 4, 5)
    assert torch.equal(pack_sign_bits(video, dim=1), pack_sign_bits(video.movedim(1, -1)))
    assert torch.equal(pack_sign_bits(video, dim=-4), pack_sign_bits(video.movedim(1, -1)))


# factorized entropy


def dense_entropies(x, tau, scale, groups):
    """Unclamped per-sample entropy and the sum of group-marginal batch entropies, computed densely."""
    ref = LFQ(codebook_size=2 ** x.shape[-1], codebook_scale=scale)
    codes = ref.indices_to_codes(torch.arange(2 ** x.shape[-1]), project_out=False)  # (k, d)
    logp = (2 * tau * x @ codes.T).log_softmax(-1)  # (t, k)
    per_sample = -(logp.exp() * logp).sum(-1).mean()
    batch = 0.0
    for group in groups:
        weights = 2 ** torch.arange(len(group) - 1, -1, -1)
        sub = ((codes[:, group] > 0).long() * weights).sum(-1)  # sub-code of each full code
        marginal = torch.zeros(2 ** len(group)).index_add_(0, sub, logp.exp().mean(0))
        batch = batch - (marginal * marginal.log()).sum()
    return per_sample, batch


@pytest.mark.parametrize("group_size, groups", [(8, [list(range(8))]), (3, [[0, 1, 2], [3, 4, 5], [6, 7]])])
@pytest.mark.parametrize("tau", [100.0, 2.0])
def test_factorized_entropy_definition(group_size, groups, tau):
    torch.manual_seed(0)
    scale = 0.5
    x = torch.randn(40, 1, 8) * 0.3
    quantizer = LFQ(codebook_size=2**8, factorized_entropy=True, entropy_group_size=group_size, codebook_scale=scale)
    _, (per_sample, batch, _) = quantizer(x.transpose(0, 1), inv_temperature=tau, return_loss_breakdown=True)
    expected_per_sample, expected_batch = dense_entropies(x[:, 0], tau, scale, groups)
    torch.testing.assert_close(per_sample, expected_per_sample, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch, expected_batch, rtol=1e-4, atol=1e-5)
    _, full_batch = dense_entropies(x[:, 0], tau, scale, [list(range(8))])
    assert batch >= full_batch - 1e-5  # the grouped batch entropy is an upper bound


def test_factorized_entropy_trains_at_2_pow_32():
    quantizer = LFQ(codebook_size=2**32, factorized_entropy=True)
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    quantized, indices, aux = quantizer(x)
    aux.backward()
    assert indices.max() < 2**32 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# contract


def test_seed_usage_example():
    quantizer = lfqtok.LFQ(
        dim=256,
        codebook_size=1024,  # Must be a power of 2; log2(1024) = 10 bits per code
        num_codebooks=1,
        entropy_loss_weight=0.1,
        commitment_loss_weight=1.0,
        diversity_gamma=2.5,
    )
    encoder_output = torch.randn(4, 256, 8, 16, 16)  # (B, D, T, H, W)
    (quantized, indices, aux_loss), loss_breakdown = quantizer(encoder_output, return_loss_breakdown=True)
    reconstructed = quantizer.indices_to_codes(indices)
    assert quantized.shape == reconstructed.shape == (4, 256, 8, 16, 16)
    assert indices.shape == (4, 8, 16, 16) and int(indices.max()) < 1024
    assert isinstance(loss_breakdown, LossBreakdown) and aux_loss.ndim == 0
    torch.testing.assert_close(reconstructed, quantized)


def test_state_dict_loads_both_ways():
    ref, ours = make_pair(dim=12, codebook_size=2**5)
    expected = {"project_in.weight", "project_in.bias", "project_out.weight", "project_out.bias", "mask"}
    assert set(ours.state_dict()) == expected
    torch.manual_seed(9)
    fresh = RefLFQ(dim=12, codebook_size=2**5)
    fresh.load_state_dict(ours.state_dict())
    torch.testing.assert_close(fresh.project_in.weight, ref.project_in.weight)


def test_autocast_and_half_inputs_quantize_in_float32():
    quantizer = LFQ(codebook_size=2**6)
    x = torch.randn(2, 6, 3, 3)
    expected = quantizer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(x.bfloat16())
    assert isinstance(out, Return) and out.quantized.dtype == torch.float32
    assert torch.equal(out.indices, expected.indices)
    grads = []
    for enabled in (False, True):  # backward under autocast stays float32
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            quantizer(xi).entropy_aux_loss.backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "dim or codebook_size"),
        ({"codebook_size": 1000}, "power of 2"),
        ({"dim": 4, "frac_per_sample_entropy": 0.0}, "frac_per_sample_entropy"),
        ({"dim": 4, "frac_per_sample_entropy": 1.5}, "frac_per_sample_entropy"),
        ({"codebook_size": 16, "num_codebooks": 2, "keep_num_codebooks_dim": False}, "keep_num_codebooks_dim"),
        ({"codebook_size": 16, "codebook_scale": 0.0}, "codebook_scale"),
        ({"codebook_size": 16, "num_codebooks": 0}, "num_codebooks"),
        ({"codebook_size": 16, "entropy_group_size": 0}, "entropy_group_size"),
        ({"codebook_size": 2**63}, "int64"),
    ],
)
def test_invalid_arguments_raise_usage_error(kwargs, message):
    with pytest.raises(UsageError, match=message):
        LFQ(**kwargs)


@pytest.mark.parametrize(
    "shape, mask",
    [((2, 5, 3, 3), None), ((2, 4), None), ((2, 9, 4), torch.ones(2, 8, dtype=torch.bool))],
)
def test_bad_inputs_raise_usage_error(shape, mask):
    with pytest.raises(UsageError):
        LFQ(codebook_size=16)(torch.randn(shape), mask=mask)


def test_dense_entropy_of_uniform_codes_is_log_codebook_size():
    quantizer = LFQ(codebook_size=2**10, diversity_gamma=1.0)
    _, (per_sample, batch, _) = quantizer(torch.zeros(1, 3, 10), return_loss_breakdown=True)
    torch.testing.assert_close(per_sample.item(), math.log(2**10), rtol=1e-5, atol=0)
    torch.testing.assert_close(batch.item(), math.log(2**10), rtol=1e-5, atol=0)
