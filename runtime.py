"""Process set-up every entry point runs first: XLA's flags, malloc, age.

`setup()` is the one call: `main.py`, `sweep.py` (whose trials inherit its
XLA_FLAGS), the tests' conftest and the benchmarks make it before JAX starts
its backends. It

  * adds the default XLA CPU flags to `XLA_FLAGS` (a user's own setting of
    a flag wins); XLA reads the variable once, when its backends start;
  * tells glibc's malloc to keep memory that XLA frees inside the process.

Each step of a jitted program on XLA's CPU backend allocates its temporary
buffers and frees them when it ends. glibc hands large freed blocks back to
the kernel (blocks above its mmap threshold are unmapped, a free top of the
heap is trimmed), so the next step touches new pages and the kernel
zero-fills each on its first write. Three `mallopt` settings keep those
pages: large blocks come from the heap instead of their own mappings, the
heap is not trimmed, and every thread allocates from that one heap (glibc
gives each of XLA's worker threads an arena of its own otherwise, whose
heaps are at most 64 MB and are handed back when empty: a ResNet-20 step at
batch 128 page-faulted some 94,000 times without this). The process then
holds on to its peak memory, as PyTorch's caching allocators do. No library of the ecosystem does this from inside a
running process (jemalloc or tcmalloc would need LD_PRELOAD before it
starts), so it is a few calls to the C library. What each setting gains is
measured by `bench/benchmark.py --mode=xla_flags` and `--mode=malloc`
(docs/performance.md).

`process_age_seconds()` says how long the process has run, for the
first-step log line.
"""

import ctypes
import ctypes.util
import os
import time
from typing import Optional

from absl import logging
import psutil

# XLA CPU flags added unless XLA_FLAGS names them already. The YNNPACK
# fusions run dots, elementwise ops and reductions through XNNPACK's newer
# kernels; they change float rounding, not determinism. GPUs ignore them.
DEFAULT_CPU_XLA_FLAGS = {
    'xla_cpu_experimental_ynn_fusion_type': 'dot,eltwise,reduce',
}

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Freed memory at the top of the heap is returned to the kernel only above
# this; mallopt takes an int, so this is the largest value it accepts.
_NEVER_TRIM = 2**31 - 1

# The same three malloc settings as glibc's environment variables, for
# processes that cannot call keep_freed_memory (the benchmark gives them to
# PyTorch).
MALLOC_ENVIRONMENT = {'MALLOC_MMAP_MAX_': '0',
                      'MALLOC_TRIM_THRESHOLD_': str(_NEVER_TRIM),
                      'MALLOC_ARENA_MAX': '1'}

# Settings a user may have made for glibc's malloc in the environment; any
# of them means they tune it themselves.
USER_MALLOC_SETTINGS = ('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                        'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TOP_PAD_',
                        'MALLOC_ARENA_MAX', 'LD_PRELOAD')

# What keep_freed_memory set in this process (for summary.json), or None.
malloc_applied: Optional[str] = None


def setup(log: bool = True) -> list[str]:
  """The process set-up; call it before anything starts JAX's backends.

  Args:
    log: log a line for each setting made.

  Returns:
    One description per setting made (empty if the environment made them).
  """
  made = []
  added = add_default_xla_flags()
  if added:
    made.append(f'XLA_FLAGS += {" ".join(added)} (a value of your own in '
                f'XLA_FLAGS wins)')
  kept = keep_freed_memory()
  if kept:
    made.append(f'malloc keeps freed memory ({kept}; any MALLOC_* '
                f'variable turns this off)')
  if log and made:
    logging.info('CPU speed-ups: %s', '; '.join(made))
  return made


def add_default_xla_flags() -> list[str]:
  """Adds DEFAULT_CPU_XLA_FLAGS to XLA_FLAGS; returns those added.

  A user's own setting wins: e.g. XLA_FLAGS=--xla_cpu_experimental_ynn_
  fusion_type= turns the fusions off.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  added = [f'--{name}={value}' for name, value in
           DEFAULT_CPU_XLA_FLAGS.items() if f'--{name}=' not in flags]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()
  return added


def keep_freed_memory() -> Optional[str]:
  """Sets glibc's malloc to keep freed memory in the process.

  Returns:
    What was set, for the log; None where nothing was (not glibc, or the
    environment already tunes malloc: MALLOC_* variables, glibc.malloc
    tunables or a preloaded allocator).
  """
  if any(os.environ.get(name) for name in USER_MALLOC_SETTINGS) or (
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
          mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) and
          mallopt(_M_ARENA_MAX, 1)):
    return None
  global malloc_applied
  malloc_applied = (f'glibc mallopt: mmap_max=0, trim_threshold={_NEVER_TRIM}'
                    ', arena_max=1')
  return malloc_applied


def process_age_seconds() -> float:
  """Seconds since this process started.

  On Linux from the kernel's boot-time clock in 1/100 s (_age_from_proc).
  psutil's create_time adds the boot time, which the kernel gives in whole
  seconds, so its age can be up to 1 s off; it is the answer where /proc is
  missing or disagrees with it by more than that (a container may show its
  own uptime but the host's start times).
  """
  coarse = time.time() - psutil.Process().create_time()
  fine = _age_from_proc()
  return fine if fine is not None and abs(fine - coarse) < 1.5 else coarse


def _age_from_proc() -> Optional[float]:
  """/proc/uptime less this process's start time in /proc/self/stat."""
  try:
    with open('/proc/uptime') as f:
      uptime = float(f.read().split()[0])
    with open('/proc/self/stat') as f:
      # Field 22; the command name (field 2) may hold spaces, so count from
      # its closing parenthesis.
      start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None
  return uptime - start_ticks / os.sysconf('SC_CLK_TCK')
