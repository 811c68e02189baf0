"""Keeps memory that XLA frees on the CPU inside the process.

Each step of a jitted program on XLA's CPU backend allocates its temporary
buffers and frees them when it ends. glibc's malloc hands large freed blocks
back to the kernel (blocks above its mmap threshold are unmapped, a free top
of the heap is trimmed), so the next step touches new pages and the kernel
zero-fills each one on its first write: at batch 128 the quick-start CNN's
step took about 10,300 page faults (40 MB) each time. Two settings of glibc's
`mallopt` keep those pages: large blocks come from the heap instead of their
own mappings, and the heap is not trimmed. The process then holds on to its
peak memory, as PyTorch's caching allocators do.

No library of the ecosystem does this (jemalloc or tcmalloc preloaded with
LD_PRELOAD would, but they are not installed with pip and must be set before
the process starts); this module is a few calls to the C library.
"""

import ctypes
import ctypes.util
import os
from typing import Optional

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Freed memory at the top of the heap is returned to the kernel only above
# this; mallopt takes an int, so this is the largest value it accepts.
_NEVER_TRIM = 2**31 - 1

# The same two settings as glibc's environment variables, for processes
# that cannot call keep_freed_memory (bench/benchmark.py --mode=malloc sets
# them for PyTorch).
ENVIRONMENT = {'MALLOC_MMAP_MAX_': '0',
               'MALLOC_TRIM_THRESHOLD_': str(_NEVER_TRIM)}

# Settings a user may have made for glibc's malloc in the environment; any
# of them means they tune it themselves.
USER_SETTINGS = ('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TOP_PAD_', 'LD_PRELOAD')

# What keep_freed_memory set in this process (for summary.json), or None.
applied: Optional[str] = None


def keep_freed_memory() -> Optional[str]:
  """Sets glibc's malloc to keep freed memory in the process.

  Returns:
    What was set, for the log; None where nothing was (not glibc, or the
    environment already tunes malloc: MALLOC_*_ variables, glibc.malloc
    tunables or a preloaded allocator).
  """
  if any(os.environ.get(name) for name in USER_SETTINGS) or (
      'glibc.malloc' in os.environ.get('GLIBC_TUNABLES', '')):
    return None
  name = ctypes.util.find_library('c')
  if not name:
    return None
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # Not glibc (musl, macOS).
    return None
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  if not (mallopt(_M_MMAP_MAX, 0) and
          mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)):
    return None
  global applied
  applied = f'glibc mallopt: mmap_max=0, trim_threshold={_NEVER_TRIM}'
  return applied
