"""GPT-style causal Transformer decoder from tensor operations.

token + learned position embeddings -> L pre-LN blocks [x + attn(LN(x)); x + mlp(LN(x))] -> LN -> logits
(``output_cutoffs``: a clustered softmax over the same word vectors, lmlab.models.adaptive_softmax).

Module and parameter names follow ``torch.nn.TransformerEncoderLayer(norm_first=True)`` (``self_attn.
in_proj_weight``, ``linear1``, ``norm1``, ...), so with ``impl = "nn"`` the same state dict drives the
``torch.nn`` blocks; the tests use that to prove both compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.models.adaptive_softmax import ClusteredOutput, check_cutoffs, vocabulary_output
from lmlab.models.dropout import Dropout, dropout


class _LayerNormFunction(torch.autograd.Function):
    """Layer norm with its backward written out. Autograd through the forward's tensor ops records eight nodes
    per call: 2.6 ms at the cpu preset's 32 x 64 x 192, against 0.24 ms for torch's fused kernel; written out,
    1.0-1.7 ms. Still tensor operations, checked against nn.LayerNorm and finite differences (tests)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        centred = x - x.mean(-1, keepdim=True)
        rstd = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        normed = centred.mul_(rstd)
        ctx.save_for_backward(normed, rstd, weight)
        return torch.addcmul(bias, normed, weight)

    @staticmethod
    def backward(ctx, grad_out):
        normed, rstd, weight = ctx.saved_tensors
        rows = grad_out.reshape(-1, grad_out.size(-1))
        grad_weight = (rows * normed.reshape(rows.shape)).sum(0)
        grad_bias = rows.sum(0)
        grad_normed = grad_out * weight
        # d/dx of (x - mean) * rstd: remove the gradient's mean and its component along the normalised x.
        grad_x = grad_normed - grad_normed.mean(-1, keepdim=True)
        grad_x -= normed * (grad_normed * normed).mean(-1, keepdim=True)
        return grad_x.mul_(rstd), grad_weight, grad_bias, None


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dimension (biased variance, as nn.LayerNorm)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


class KVCache:
    """Keys and values of the positions seen so far, for one layer: generation then costs one new position
    per step instead of re-running the whole prefix."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, attn_impl: str):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if attn_impl not in ("matmul", "sdpa"):
            raise ValueError(f"unknown attn_impl '{attn_impl}': choose matmul or sdpa")
        self.n_heads = n_heads
        self.attn_impl = attn_impl
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))  # q, k, v stacked
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        batch, steps, d_model = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(d_model, dim=-1)
        # (B, T, D) -> (B, heads, T, D/heads)
        q, k, v = (t.view(batch, steps, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(k, v)
        # Query i sits at position past + i and may attend keys 0 .. past + i.
        future = torch.ones(steps, past + steps, dtype=torch.bool, device=x.device).triu(past + 1)
        p = self.dropout if self.training else 0.0
        if self.attn_impl == "sdpa" and (p == 0 or x.device.type != "cpu"):
            if past == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=~future, dropout_p=p)
        else:
            # Also sdpa's training path on CPU: torch has no fused CPU kernel with attention dropout and runs
            # these same operations itself, with the slower Bernoulli mask.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            weights = dropout(scores.masked_fill(future, float("-inf")).softmax(-1), p)
            y = weights @ v
        return self.out_proj(y.transpose(1, 2).reshape(batch, steps, d_model))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, attn_impl: str):
        super().__init__()
        self.norm1 = LayerNorm(d_model)
        self.self_attn = CausalSelfAttention(d_model, n_heads, dropout, attn_impl)
        self.dropout1 = Dropout(dropout)
        self.norm2 = LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout2 = Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), cache))
        return x + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))


class TransformerLM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        impl: str = "scratch",
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        d_ff: int = 1024,
        context_length: int = 128,
        dropout: float = 0.1,
        dropout_emb: float = 0.1,
        tie_weights: bool = True,
        attn_impl: str = "sdpa",
        init_std: float = 0.02,
        output_cutoffs: list[int] = (),
    ):
        super().__init__()
        from lmlab.models.nn_twins import TorchBlock  # the nn twin of Block

        if impl not in ("scratch", "nn"):
            raise ValueError(f"unknown impl '{impl}': choose scratch or nn")
        self.context_length = context_length
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model)
        self.drop = Dropout(dropout_emb) if impl == "scratch" else nn.Dropout(dropout_emb)
        make = (lambda: Block(d_model, n_heads, d_ff, dropout, attn_impl)) if impl == "scratch" else (
            lambda: TorchBlock(d_model, n_heads, d_ff, dropout)
        )
        self.blocks = nn.ModuleList(make() for _ in range(n_layers))
        self.norm_f = LayerNorm(d_model) if impl == "scratch" else nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok_emb.weight
        # A clustered (adaptive) softmax over the same word vectors: most of the output layer's work skipped.
        cutoffs = check_cutoffs(output_cutoffs, vocab_size)
        self.clusters = ClusteredOutput(d_model, cutoffs, bias=False) if cutoffs else None
        self._init_weights(n_layers, init_std)

    def _init_weights(self, n_layers: int, std: float) -> None:
        """GPT-2 initialisation: N(0, std), residual output projections scaled by 1/sqrt(2L) so the residual
        stream's variance does not grow with depth."""
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            scale = 1 / math.sqrt(2 * n_layers) if name.endswith(("out_proj.weight", "linear2.weight")) else 1.0
            nn.init.normal_(p, 0.0, std * scale)
        for name, p in self.named_parameters():
            if p.dim() == 1 and "norm" not in name:
                nn.init.zeros_(p)

    def new_cache(self) -> list[KVCache]:
        if not isinstance(self.blocks[0], Block):
            raise ValueError("key/value caching needs impl='scratch' (load the same weights into it)")
        return [KVCache() for _ in self.blocks]

    def forward(self, tokens: torch.Tensor, cache: list[KVCache] | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, T) ids; with a cache, they continue the positions the cache holds.
        The total length must stay within context_length. Returns logits (B, T, V), or with ``targets``
        (B, T) the mean cross-entropy (fused with the output layer on CPU)."""
        past = cache[0].length if cache else 0
        steps = tokens.size(1)
        if past + steps > self.context_length:
            raise ValueError(f"sequence of {past + steps} tokens exceeds context_length={self.context_length}")
        positions = torch.arange(past, past + steps, device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))
        for k, block in enumerate(self.blocks):
            x = block(x) if cache is None else block(x, cache[k])
        return vocabulary_output(self.norm_f(x), self.head, self.clusters, targets)
