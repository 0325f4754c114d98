"""The decoding batch as the engine built it before the pool of slots (kv_pool.py): rows stacked left-padded into
new buffers at every join or leave, masked by a 2D padding mask. Kept for the benchmarks that compare against it."""

import torch


def stack_left_padded(rows: list[list[tuple]], room: int = 0) -> tuple[list[tuple], list[int]]:
    """Per-layer (keys, values) of several rows as one batch, shorter rows padded on the left, in buffers with
    `room` tokens free after the longest row.

    Returns the batch and each row's padding; padded positions must be masked out.
    """

    lengths = [row[0][0].shape[2] for row in rows]
    longest = max(lengths)
    pads = [longest - n for n in lengths]
    layers = []
    for layer in range(len(rows[0])):
        stacked = []
        for part in (0, 1):
            first = rows[0][layer][part]
            batch = first.new_zeros((len(rows), first.shape[1], longest + room, first.shape[3]))
            for i, row in enumerate(rows):
                batch[i, :, pads[i]:longest] = row[layer][part][0]
            stacked.append(batch)
        layers.append(tuple(stacked))
    return layers, pads


def padding_mask(pads: list[int], capacity: int, device) -> torch.Tensor:
    """The attention mask of a left-padded batch for up to `capacity` tokens: 0 over each row's padding."""
    mask = torch.ones((len(pads), capacity), dtype=torch.long, device=device)
    for i, pad in enumerate(pads):
        mask[i, :pad] = 0
    return mask
