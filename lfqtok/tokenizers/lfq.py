"""Lookup-Free Quantization (https://arxiv.org/abs/2310.05737) with bounded-memory entropy losses.

Same contract and values as CogVideo's / lucidrains' `LFQ`, but the entropy terms never materialize the
(tokens, 2^D) probability matrix: the softmax over +-s codes factorizes over bits, so probabilities are
products of two (tokens, 2^(D/2)) tables, the batch mean is a matmul of them, the 1e-5-clamped per-sample
entropy is summed only over rows holding a probability >= 1e-5, and backward recomputes instead of saving.
Bit order: channel 0 of a codebook is the most significant bit of its index; code value +s <=> bit 1.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfqtok.errors import UsageError

# constants

Return = namedtuple("Return", ["quantized", "indices", "entropy_aux_loss"])

LossBreakdown = namedtuple("LossBreakdown", ["per_sample_entropy", "batch_entropy", "commitment"])

EPS = 1e-5  # probability clamp of the reference entropy
LOG_EPS = math.log(EPS)
BLOCK_ELEMS = 1 << 23  # at most this many (row, code) pairs live at once: 32 MiB per float32 temporary
MAX_BITS = 62  # indices are int64

# helpers


def exists(v) -> bool:
    return v is not None


def default(v, d):
    return v if exists(v) else d


def bit_weights(bits: int, device: torch.device | str | None = None) -> Tensor:
    """(D,) int64 weights 2^(D-1) .. 1: channel 0 is the most significant bit."""
    return torch.ones((), dtype=torch.int64, device=device) << torch.arange(bits - 1, -1, -1, device=device)


def pack_along(bits: Tensor, weights: Tensor, dim: int) -> Tensor:
    """Bool bits with the D bits on `dim` -> int64 indices; int32 products (2x less traffic) when D <= 31."""
    shape = (-1,) + (1,) * (bits.ndim - dim - 1 if dim >= 0 else -dim - 1)
    if weights.numel() <= 31:
        return (bits * weights.int().view(shape)).sum(dim, dtype=torch.int64)
    return (bits * weights.view(shape)).sum(dim)


def pack_sign_bits(x: Tensor, dim: int = -1) -> Tensor:
    """(..., D) float -> (...) int64 indices, bit i = (x[..., i] > 0), MSB first; the whole eval quantizer.

    `dim` names the D axis, e.g. 1 for (b, D, t, h, w) latents, which then need no channel-last copy.
    """
    return pack_along(x > 0, bit_weights(x.shape[dim], x.device), dim)


def unpack_bits(indices: Tensor, bits: int) -> Tensor:
    """(...) int indices -> (..., D) bool bits, MSB first; the inverse of `pack_sign_bits`."""
    return (indices.long()[..., None] & bit_weights(bits, indices.device)) != 0


def bits_to_codes(bits: Tensor, scale: float) -> Tensor:
    """(..., D) bool -> (..., D) float32 codes, +scale for a set bit, -scale otherwise."""
    return bits.float().mul_(2 * scale).sub_(scale)


def code_range(start: int, stop: int, bits: int, scale: float, device: torch.device) -> Tensor:
    """(stop - start, D) float32 codes of indices start .. stop - 1: one chunk of the implicit codebook."""
    return bits_to_codes(unpack_bits(torch.arange(start, stop, device=device), bits), scale)


def log_partition(logit_scale_x: Tensor, scale: float) -> Tensor:
    """log sum_c exp(z . c) over all +-scale codes, closed form: sum_d log(2 cosh(scale * z_d)); (t, d) -> (t,)."""
    a = logit_scale_x * scale
    return torch.logaddexp(a, -a).sum(-1)


def clamped_entropy(prob: Tensor) -> Tensor:
    """Entropy (nats) over the last dim with probabilities clamped at EPS inside the log, as the reference."""
    return -(prob * prob.clamp(min=EPS).log()).sum(-1)


def iter_chunks(n: int, size: int):
    """Slices of at most `size` covering 0 .. n - 1."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def half_codebooks(bits: int, scale: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Codes of the upper bits // 2 channels (2^h, h) and of the lower channels (2^l, l) of a codebook."""
    h = bits // 2
    return code_range(0, 1 << h, h, scale, device), code_range(0, 1 << bits - h, bits - h, scale, device)


def half_log_probs(z: Tensor, codes: Tensor, scale: float) -> Tensor:
    """(t, h) logit-scaled inputs of h channels, (2^h, h) codes -> (t, 2^h) log-probs of their bit patterns."""
    return torch.addmm(-log_partition(z, scale)[:, None], z, codes.T)


def active_rows(log_hi: Tensor, log_lo: Tensor) -> Tensor:
    """(t, 2^h), (t, 2^l) half log-probs -> (t, 2^h) bool: the (token, hi) rows holding a probability >= EPS."""
    return log_hi + log_lo.amax(1, keepdim=True) >= LOG_EPS


def iter_rows(active: Tensor, log_hi: Tensor, log_lo: Tensor):
    """Chunks of (token, hi, (n, 2^l) log-probs) over the active rows; elsewhere no per-code work is needed."""
    rows = active.nonzero()  # (n, 2): token, hi
    for chunk in iter_chunks(rows.shape[0], max(1, BLOCK_ELEMS // log_lo.shape[1])):
        token, hi = rows[chunk].unbind(1)
        yield token, hi, log_hi[token, hi][:, None] + log_lo[token]


# entropy


class ClampedEntropy(torch.autograd.Function):
    """(t, c, d) inputs -> (mean clamped per-sample entropy, (c, 2^d) mean probabilities), O(t * d) saved.

    Probabilities are softmax(2 tau x . code) over all 2^d codes of value +-scale, the reference's
    distribution. It factorizes over bits, so with code = (hi, lo) (upper d // 2 bits, lower bits)
    p(hi, lo) = p_hi(hi) p_lo(lo): the batch mean is one matmul of the two factors per token chunk, and
    sum_j p_j log max(p_j, eps) needs per-code work only on (token, hi) rows that hold a probability
    >= eps (every other row adds p_hi(hi) log eps). Backward recomputes the same way.
    """

    @staticmethod
    def forward(ctx, x: Tensor, inv_temperature: float, scale: float) -> tuple[Tensor, Tensor]:
        t, c, d = x.shape
        h = d // 2
        codes_hi, codes_lo = half_codebooks(d, scale, x.device)
        neg_ent = torch.zeros((), dtype=torch.float64, device=x.device)  # sum_t sum_j p_j log max(p_j, eps)
        avg = torch.zeros(c, 1 << h, 1 << d - h, dtype=x.dtype, device=x.device)
        for ci in range(c):
            z = x[:, ci] * (2 * inv_temperature)  # (t, d) logit scale
            for ts in iter_chunks(t, max(1, BLOCK_ELEMS >> d - h)):
                log_hi = half_log_probs(z[ts, :h], codes_hi, scale)  # (t', 2^h)
                log_lo = half_log_probs(z[ts, h:], codes_lo, scale)  # (t', 2^l)
                avg[ci] += log_hi.exp().T @ log_lo.exp()
                active = active_rows(log_hi, log_lo)
                neg_ent += LOG_EPS * torch.where(active, 0, log_hi.exp()).sum()  # rows all below eps
                for _, _, logp in iter_rows(active, log_hi, log_lo):
                    neg_ent += torch.dot(logp.exp().view(-1), logp.clamp_(min=LOG_EPS).view(-1))
        ctx.save_for_backward(x)
        ctx.inv_temperature, ctx.scale = inv_temperature, scale
        return (-neg_ent / (t * c)).to(x.dtype), avg.view(c, -1) / t

    @staticmethod
    def backward(ctx, grad_ent: Tensor, grad_avg: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):  # float32 even if backward runs under autocast
            return ClampedEntropy.input_grad(x, grad_ent.float(), grad_avg.float(), ctx.inv_temperature, ctx.scale)

    @staticmethod
    def input_grad(x: Tensor, grad_ent: Tensor, grad_avg: Tensor, tau: float, scale: float) -> tuple[Tensor, None, None]:
        """d loss / d x from the gradients of the two outputs, recomputing the probabilities chunk by chunk."""
        t, c, d = x.shape
        h = d // 2
        codes_hi, codes_lo = half_codebooks(d, scale, x.device)
        a = grad_ent / (t * c)  # d loss / d per-token entropy
        grad = torch.empty_like(x)
        for ci in range(c):
            # d loss / d p_j = w_j + a * u_j, u_j = -(log max(p_j, eps) + [p_j >= eps]); constant shifts per
            # token leave the softmax gradient unchanged: w is centred and u loses its log eps, so that
            # u_j = -(log p_j - log eps + 1) for p_j >= eps and 0 elsewhere
            w = ((grad_avg[ci] - grad_avg[ci].mean()) / t).view(1 << h, 1 << d - h)  # (2^h, 2^l)
            z = x[:, ci] * (2 * tau)
            mean_code = scale * torch.tanh(z * scale)  # sum_j p_j code_j, closed form
            for ts in iter_chunks(t, max(1, BLOCK_ELEMS >> d - h)):
                log_hi = half_log_probs(z[ts, :h], codes_hi, scale)  # (t', 2^h)
                log_lo = half_log_probs(z[ts, h:], codes_lo, scale)  # (t', 2^l)
                p_hi, p_lo = log_hi.exp(), log_lo.exp()
                pw_lo = (p_hi @ w).mul_(p_lo)  # (t', 2^l): sum_hi p_j w_j
                pw_hi = (p_lo @ w.T).mul_(p_hi)  # (t', 2^h): sum_lo p_j w_j
                s1 = pw_lo.sum(1)  # sum_j p_j g_j
                v_hi, v_lo = pw_hi @ codes_hi, pw_lo @ codes_lo  # sum_j p_j g_j code_j, split by channels
                for token, hi, logp in iter_rows(active_rows(log_hi, log_lo), log_hi, log_lo):
                    p = logp.exp()
                    shifted = logp.sub_(LOG_EPS - 1)  # log p - log eps + 1
                    pu = torch.where(shifted >= 1, shifted, 0).mul_(p).mul_(-a)  # (n, 2^l): p_j a u_j
                    row = pu.sum(1)
                    s1.index_add_(0, token, row)
                    v_hi.index_add_(0, token, row[:, None] * codes_hi[hi])
                    v_lo.index_add_(0, token, pu @ codes_lo)
                grad[ts, ci] = (2 * tau) * (torch.cat([v_hi, v_lo], 1) - s1[:, None] * mean_code[ts])
        return grad, None, None


def factorized_entropies(x: Tensor, inv_temperature: float, scale: float, group_size: int) -> tuple[Tensor, Tensor]:
    """(t, c, d) -> (exact per-sample entropy, sum over bit groups of the batch-mean group entropy), unclamped.

    Per token the code distribution is a product of independent bits with P(bit) = sigmoid(4 tau s x_d), so
    its entropy is the sum of binary entropies. The batch term sums the entropies of the batch-mean
    distribution of each group of `group_size` bits (the last group may be smaller): by subadditivity an
    upper bound of the full batch entropy, equal to it when the groups are independent under the batch mean.
    """
    t, c, d = x.shape
    a = x * (4 * inv_temperature * scale)  # logit of each bit
    p = torch.sigmoid(a)
    per_sample = (p * F.softplus(-a) + (1 - p) * F.softplus(a)).sum(-1).mean()
    batch = x.new_zeros(())
    for g0 in range(0, d, group_size):
        gd = min(group_size, d - g0)
        codes = code_range(0, 1 << gd, gd, scale, x.device)  # (2^g, g)
        probs = ((2 * inv_temperature) * x[..., g0 : g0 + gd] @ codes.T).softmax(-1)  # (t, c, 2^g)
        avg = probs.mean(0)  # (c, 2^g)
        batch = batch - (avg * avg.clamp(min=torch.finfo(avg.dtype).tiny).log()).sum(-1).mean()
    return per_sample, batch


# class


class LFQ(nn.Module):
    """Lookup-free quantizer: sign of each latent channel -> +-codebook_scale, bits -> integer index.

    Outputs stay float32 (CogVideo behaviour); the quantization runs in float32 with autocast disabled.
    Default entropy terms equal the reference's (1e-5-clamped, natural log) in bounded memory.
    `factorized_entropy=True` replaces them, for codebooks too big to enumerate, by: the exact unclamped
    per-sample entropy (sum of per-bit binary entropies; >= the clamped value) and, as batch entropy, the
    sum over groups of `entropy_group_size` bits of the entropy of the batch-mean group distribution (an
    upper bound of the unclamped batch entropy, exact for one group); both O(tokens * D * 2^group) work.
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        codebook_size: int | None = None,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        straight_through_activation: Callable[[Tensor], Tensor] = nn.Identity(),
        num_codebooks: int = 1,
        keep_num_codebooks_dim: bool | None = None,
        codebook_scale: float = 1.0,
        frac_per_sample_entropy: float = 1.0,  # < 1: entropy terms on a random fraction of the tokens
        factorized_entropy: bool = False,  # O(t * d) unclamped entropies for huge codebooks, see docs
        entropy_group_size: int = 9,  # bits per group of the factorized batch entropy
    ):
        super().__init__()
        if not exists(dim) and not exists(codebook_size):
            raise UsageError("LFQ needs dim or codebook_size")
        if exists(codebook_size) and (codebook_size < 2 or codebook_size & (codebook_size - 1)):
            raise UsageError(f"codebook_size must be a power of 2 >= 2, got {codebook_size}")
        if exists(dim) and dim < 1:
            raise UsageError(f"dim must be positive, got {dim}")
        if num_codebooks < 1:
            raise UsageError(f"num_codebooks must be >= 1, got {num_codebooks}")
        keep_num_codebooks_dim = default(keep_num_codebooks_dim, num_codebooks > 1)
        if num_codebooks > 1 and not keep_num_codebooks_dim:
            raise UsageError("keep_num_codebooks_dim=False needs num_codebooks=1")
        if not 0 < frac_per_sample_entropy <= 1:
            raise UsageError(f"frac_per_sample_entropy must be in (0, 1], got {frac_per_sample_entropy}")
        if not codebook_scale > 0:
            raise UsageError(f"codebook_scale must be positive, got {codebook_scale}")
        if entropy_group_size < 1:
            raise UsageError(f"entropy_group_size must be >= 1, got {entropy_group_size}")

        codebook_size = default(codebook_size, 2**dim if exists(dim) else None)
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_size.bit_length() - 1
        if self.codebook_dim > MAX_BITS:
            raise UsageError(f"at most 2^{MAX_BITS} codes (int64 indices), got 2^{self.codebook_dim}")
        codebook_dims = self.codebook_dim * num_codebooks
        self.dim = default(dim, codebook_dims)
        self.num_codebooks = num_codebooks
        self.keep_num_codebooks_dim = keep_num_codebooks_dim

        self.has_projections = self.dim != codebook_dims
        self.project_in = nn.Linear(self.dim, codebook_dims) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dims, self.dim) if self.has_projections else nn.Identity()

        self.activation = straight_through_activation
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.codebook_scale = codebook_scale
        self.frac_per_sample_entropy = frac_per_sample_entropy
        self.factorized_entropy = factorized_entropy
        self.entropy_group_size = entropy_group_size

        self.register_buffer("mask", bit_weights(self.codebook_dim))  # reference name; state_dict compatible

    def indices_to_codes(self, indices: Tensor, project_out: bool = True) -> Tensor:
        """Indices (b, ...[, c]) -> codes (b, dim, ...) for images/video, (b, n, dim) for sequences."""
        is_img_or_video = indices.ndim >= 3 + int(self.keep_num_codebooks_dim)
        if not self.keep_num_codebooks_dim:
            indices = indices[..., None]
        codes = bits_to_codes(unpack_bits(indices, self.codebook_dim), self.codebook_scale)  # (..., c, d)
        codes = codes.flatten(-2)
        if project_out:
            codes = self.project_out(codes)
        return codes.movedim(-1, 1) if is_img_or_video else codes

    def forward(
        self,
        x: Tensor,
        inv_temperature: float = 100.0,
        return_loss_breakdown: bool = False,
        mask: Tensor | None = None,
    ):
        """x (b, dim, h, w) / (b, dim, t, h, w) / (b, n, dim) -> Return(quantized like x, indices, aux loss).

        Letters: b batch, n tokens (flattened space-time), c codebooks, d bits per codebook (log2 size).
        Indices are (b, ..., c), or (b, ...) when keep_num_codebooks_dim is False. `mask` (b, n) or
        (b, ...) selects the tokens that enter the entropy and commitment losses; the batch entropy is
        then that of the selected tokens' mean distribution (the reference's mask path flattens tokens
        with codebooks and so returns the per-sample entropy as its batch entropy).
        """
        if x.ndim < 3:
            raise UsageError(f"LFQ input must be (b, n, d), (b, d, h, w) or (b, d, t, h, w), got {tuple(x.shape)}")
        is_img_or_video = x.ndim >= 4
        channel_axis = 1 if is_img_or_video else -1
        if x.shape[channel_axis] != self.dim:
            raise UsageError(f"expected {self.dim} channels in LFQ input, got shape {tuple(x.shape)}")

        if not self.training and not self.has_projections:
            return self.quantize_eval(x, is_img_or_video, return_loss_breakdown)

        if is_img_or_video:
            x = x.movedim(1, -1)
        token_shape = x.shape[:-1]  # (b, ...)
        x = self.project_in(x.reshape(x.shape[0], -1, x.shape[-1]))  # (b, n, c * d)

        with torch.autocast(x.device.type, enabled=False):
            x = x.float().unflatten(-1, (self.num_codebooks, self.codebook_dim))  # (b, n, c, d)
            original = x
            positive = x > 0
            quantized = bits_to_codes(positive, self.codebook_scale)
            indices = pack_along(positive, self.mask, -1)  # (b, n, c)
            zero = x.new_zeros(())
            per_sample = batch = commitment = zero
            if self.training:
                x = self.activation(x)
                x = x + (quantized - x).detach()
                flat_mask = self.flat_mask(mask, original.shape[:2])
                per_sample, batch = self.entropies(original, flat_mask, inv_temperature)
                if self.commitment_loss_weight > 0:
                    commit = F.mse_loss(original, quantized.detach(), reduction="none")
                    commitment = (commit[flat_mask] if exists(flat_mask) else commit).mean()
            else:
                x = quantized

        x = self.project_out(x.flatten(-2)).unflatten(1, token_shape[1:])  # (b, ..., dim)
        if is_img_or_video:
            x = x.movedim(-1, 1)
        indices = indices.unflatten(1, token_shape[1:])
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)

        entropy_aux = per_sample - self.diversity_gamma * batch
        aux_loss = entropy_aux * self.entropy_loss_weight + commitment * self.commitment_loss_weight
        ret = Return(x, indices, aux_loss)
        if not return_loss_breakdown:
            return ret
        return ret, LossBreakdown(per_sample, batch, commitment)

    # helpers

    def quantize_eval(self, x: Tensor, is_img_or_video: bool, return_loss_breakdown: bool):
        """Eval without projections: sign + bit pack in the input layout, no entropy work, no codebook."""
        axis = 1 if is_img_or_video else x.ndim - 1
        positive = x > 0
        bits = positive.unflatten(axis, (self.num_codebooks, self.codebook_dim))  # codebook bits at axis + 1
        indices = pack_along(bits, self.mask, axis + 1)  # (b, c, ...) or (b, n, c)
        if is_img_or_video:
            indices = indices.movedim(1, -1)
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)
        quantized = bits_to_codes(positive, self.codebook_scale)
        zero = quantized.new_zeros(())
        ret = Return(quantized, indices, zero)
        return (ret, LossBreakdown(zero, zero, zero)) if return_loss_breakdown else ret

    def flat_mask(self, mask: Tensor | None, bn: torch.Size) -> Tensor | None:
        """User mask (b, n) or (b, ...) -> (b, n) bool, checked against the tokens."""
        if not exists(mask):
            return None
        if mask.numel() != bn.numel() or mask.shape[0] != bn[0]:
            raise UsageError(f"mask of shape {tuple(mask.shape)} does not match {tuple(bn)} tokens")
        return mask.reshape(bn).bool()

    def entropies(self, x: Tensor, mask: Tensor | None, inv_temperature: float) -> tuple[Tensor, Tensor]:
        """(b, n, c, d) float32 -> (per-sample entropy, batch entropy), on masked and sampled tokens only."""
        tokens = x[mask] if exists(mask) else x.flatten(0, 1)  # (t, c, d)
        if self.frac_per_sample_entropy < 1:
            num_tokens = tokens.shape[0]
            num_sampled = int(num_tokens * self.frac_per_sample_entropy)
            sampled = torch.randn(num_tokens).argsort(dim=-1) < num_sampled  # the reference's draw
            tokens = tokens[sampled.to(tokens.device)]
        tau = float(inv_temperature)
        if self.factorized_entropy:
            return factorized_entropies(tokens, tau, self.codebook_scale, self.entropy_group_size)
        per_sample, avg_prob = ClampedEntropy.apply(tokens, tau, self.codebook_scale)
        return per_sample, clamped_entropy(avg_prob).mean()
