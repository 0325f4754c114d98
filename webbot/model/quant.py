"""int8 weights for decoding on CPU (WEBBOT_QUANT): every linear layer, the output head and the input embeddings.

Decoding one token reads every weight once, so on a CPU its speed is the bytes per weight:
fp32 reads 4.9 GB a token for Llama-3.2-1B, int8 1.2 GB. Each weight matrix is quantised
per output channel, symmetrically (`q = round(w / s)`, `s = max|w| / 127` of its row).
Activations are never quantised (each row of a batch is computed on its own, nothing of one
stream depends on another); they stay in the model's dtype between layers.

Two products, picked by the number of rows:
- a few rows (decoding several streams, or a short new message): PyTorch's int8 x bf16 kernel
  (`aten._weight_int8pack_mm`, per-channel bf16 scales), which reads the int8 weights once;
  it takes and gives bf16 (with fp32 activations it is 6x slower), so activations are
  rounded to bf16 at each linear layer: the one precision cost besides the weights;
- many rows (a prefill chunk): the int8 weights of a block of output channels are turned back
  into fp32 and multiplied weight-major (`cpu_linear`'s form) with the same bf16 rounding
  of what goes in and out, so both products agree and a KV cache made by one serves the
  other; as fast as fp32 weights on this CPU, where the int8 kernel's cost grows with the
  rows, and a second, fp32 copy of the weights for prefill would cost more memory than fp32.

fbgemm's dynamic int8 (int8 activations too, one scale per batch) was measured and not
used: 0.79 greedy agreement with fp32 and 3x the perplexity on SmolLM2, against 0.955 and
+0.5% for these weights-only products (docs/benchmarks.md).

A tied output head and input embedding share one int8 matrix (the head's rows are the
embedding's rows), so the 128k-row vocabulary is held once, in int8. The server loads the
model in its files' dtype (bf16 for Llama 3.2) and quantises from that, a block of rows at a
time, so the whole model is never held in fp32 (the peak at start is about half of fp32's);
the norms are then turned into the activations' dtype. Nothing here runs at import time
beyond importing torch.
"""

import threading

import torch
from torch import nn

from webbot.config import QUANTS

DECODE_ROWS = 16  # rows up to this go through the int8 kernel (measured crossover: 16-32); more are dequantised
DEQUANT_BLOCK = 512  # output channels dequantised at once (the fastest of 128-1024 for 256 rows)
QUANTISE_ROWS = 4096  # rows quantised at once: the fp32 copies of a 128k-row head would be gigabytes at a time


def resolve_quant(quant: str, device: str) -> str:
    """`auto` is int8 on CPU (faster to decode, docs/benchmarks.md) and none on CUDA (bf16 there)."""
    if quant not in QUANTS:
        raise ValueError(f"WEBBOT_QUANT must be one of {', '.join(QUANTS)}, not {quant!r}")
    on_gpu = device.startswith("cuda")
    if quant == "int8" and on_gpu:
        raise ValueError("WEBBOT_QUANT=int8 is for CPU decoding; on a GPU use none (bf16 weights) or auto")
    if quant == "auto":
        return "none" if on_gpu else "int8"
    return quant


def quantise_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (int8 matrix, fp32 scale of each row), a block of rows at a time."""
    weight = weight.detach()
    q = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(weight.shape[0], dtype=torch.float32)
    for start in range(0, weight.shape[0], QUANTISE_ROWS):
        w = weight[start:start + QUANTISE_ROWS].to(torch.float32, copy=True)  # divided in place below
        # scales as the int8 kernel reads them (bf16), so both products and the embeddings use the same values
        block_scales = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).to(torch.bfloat16).float()
        q[start:start + QUANTISE_ROWS] = torch.round(w.div_(block_scales[:, None])).clamp_(-127, 127)
        scales[start:start + QUANTISE_ROWS] = block_scales
    return q, scales


_SCRATCH = threading.local()


def _scratch(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat buffer of at least `numel` elements kept for this thread (grown when a larger one is asked for). It is
    made as a normal tensor even inside inference mode: an inference tensor could not be written outside it."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):
            buffer = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffer


class Int8Linear(nn.Module):
    """A linear layer holding int8 weights and per-output-channel scales."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)  # fp32, for dequantising
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16))  # for the int8 kernel
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.dtype = dtype  # the model's activations

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype | None = None) -> "Int8Linear":
        """`dtype`: the model's activations (the weights' own dtype when None)."""
        qweight, scales = quantise_rows(linear.weight)
        return cls(qweight, scales, linear.bias, dtype or linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Both products read the activations in bf16 and give bf16 results, as the int8 kernel does, so a prompt
        # read in one go and the same prompt read in pieces (a reused KV cache, then a few new tokens) agree.
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if rows.shape[0] <= DECODE_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales_bf16)
        else:
            out = self._dequantised_product(rows.to(self.dtype)).to(torch.bfloat16)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _dequantised_product(self, rows: torch.Tensor) -> torch.Tensor:
        """Many rows: blocks of output channels back in the activations' dtype, multiplied weight-major. The
        blocks and their products go through this thread's scratch buffers: a fresh tensor per block would be
        mmapped and unmapped each time under the server's malloc setting (malloc_tuning.py), which made a long
        prompt's first token 1.6-1.9x slower."""
        out = torch.empty(rows.shape[0], self.out_features, dtype=rows.dtype)
        columns = rows.t()
        block_buffer = _scratch("block", DEQUANT_BLOCK * self.in_features, rows.dtype)
        product_buffer = _scratch("product", DEQUANT_BLOCK * rows.shape[0], rows.dtype)
        for start in range(0, self.out_features, DEQUANT_BLOCK):
            stop = min(start + DEQUANT_BLOCK, self.out_features)
            block = block_buffer[:(stop - start) * self.in_features].view(stop - start, self.in_features)
            block.copy_(self.qweight[start:stop]).mul_(self.scales[start:stop, None].to(rows.dtype))
            product = product_buffer[:(stop - start) * rows.shape[0]].view(stop - start, rows.shape[0])
            out[:, start:stop] = torch.matmul(block, columns, out=product).t()
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per output channel"


class Int8Embedding(nn.Module):
    """Input embeddings read from an int8 matrix (shared with a tied output head)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[ids].to(self.dtype) * self.scales[ids].unsqueeze(-1).to(self.dtype)


def quantise_int8(model, dtype: torch.dtype | None = None) -> dict:
    """Replace the model's linear layers (its output head too) and input embeddings by int8 ones, in place,
    freeing the original weights as it goes. Returns what changed: {"linear": n, "embedding": shared|own|kept,
    "bytes": bytes of int8 weights and scales}.

    `dtype`: the activations' dtype and what every other weight (norms) is turned into, when the model was
    loaded in a narrower one to keep the peak down (bf16 files loaded as bf16, never as fp32 in full)."""
    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = (isinstance(embeddings, nn.Embedding) and isinstance(head, nn.Linear)
            and embeddings.weight.data_ptr() == head.weight.data_ptr())
    count, held = 0, 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                layer = Int8Linear.from_linear(child, dtype)
                setattr(parent, name, layer)
                count += 1
                held += layer.qweight.numel() + layer.scales.numel() * 6
                if child is head:
                    head = layer
    embedding = "kept"
    if isinstance(embeddings, nn.Embedding):
        dtype = dtype or embeddings.weight.dtype
        if tied and isinstance(head, Int8Linear):
            model.set_input_embeddings(Int8Embedding(head.qweight, head.scales, dtype))
            embedding = "shared"
        else:
            qweight, scales = quantise_rows(embeddings.weight)
            model.set_input_embeddings(Int8Embedding(qweight, scales, dtype))
            held += qweight.numel() + scales.numel() * 4
            embedding = "own"
    if dtype is not None:
        _others_to(model, dtype)
    return {"linear": count, "embedding": embedding, "bytes": held}


def _others_to(model, dtype: torch.dtype) -> None:
    """What is not int8 (norms, the rotary frequencies) in the activations' dtype; the int8 layers keep their
    scales as they are (the kernel reads bf16 ones)."""
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int8Embedding)):
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)
