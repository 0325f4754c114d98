"""glibc malloc settings for a long-running server that allocates tensors of many sizes.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB on 64-bit
Linux), so after a while tensors of a few MB come from the heap instead of mmap. Holes
between long-lived small objects (the prefix cache's tensors, sessions) then keep that
memory from going back to the system, and the server's resident memory creeps up with
every conversation. A fixed threshold switches the adjustment off: blocks over 128 KB are
mmapped and returned to the system when freed. bench/reliability.py measures the effect
(docs/reliability.md). MALLOC_MMAP_THRESHOLD_ in the environment, when set, wins;
WEBBOT_MALLOC_TUNING=off leaves glibc's defaults (to compare, or with another allocator).
"""

import ctypes
import logging
import os

log = logging.getLogger("webbot")
M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold(threshold: int = THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold; False where there is no glibc or the environment already chose."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("WEBBOT_MALLOC_TUNING") == "off":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # musl, macOS: their allocators do not behave this way
        return False
    if done:
        log.info("malloc: mmap threshold fixed at %d KB (keeps resident memory flat under load)", threshold // 1024)
    return done
