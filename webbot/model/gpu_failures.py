"""Which errors leave the process's GPU unusable, so that the engine stops and the process restarts.

After a CUDA error such as a device-side assert or an illegal memory access, the CUDA
context is poisoned: every later kernel in the process fails too, and only a new process
gets a working one. Running out of memory is not such an error: the step can be retried.
"""

import torch

UNRECOVERABLE_SIGNS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_", "cuDNN error")


def unrecoverable(exc: BaseException) -> bool:
    """Whether an error leaves the process's GPU unusable: torch.AcceleratorError, or a RuntimeError naming a
    CUDA error; never an out-of-memory error."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in UNRECOVERABLE_SIGNS)
