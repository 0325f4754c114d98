"""Batched decoding on CPU: compute each linear layer as `weight @ x.T` instead of `x @ weight.T`.

Decoding is bound by reading the weights, so several streams decoded together should
cost about as much as one. With fp32 weights on an AVX2 CPU, `torch.nn.functional.linear`
does not behave that way: for a 32768x2048 weight it took 13 ms for one row, 28 ms for
two and 55 ms for four, while the same product written as `weight @ x.T` took 13-14 ms
for one to four rows and 23 ms for eight (and was faster for 256-row prefill chunks too).
bf16 gains nothing from it on such a CPU (no native bf16 arithmetic), so only fp32
models are switched (the figures were measured on the development machine, 2 AVX2 cores;
docs/benchmarks.md has the batching they buy).
"""

import types

import torch

SMALL_BATCH_DTYPES = ("float32",)


def _forward(self, x):
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1:  # one row: the usual kernel is as fast
        return torch.nn.functional.linear(x, self.weight, self.bias)
    out = torch.matmul(self.weight, rows.t()).t()
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], self.out_features)


def use_weight_major_linear(model) -> int:
    """Switch every nn.Linear of the model to the weight-major product; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
