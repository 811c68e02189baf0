"""Tests for runtime.py: freed memory stays in the process, the process's
age, the default XLA flags."""

import os
import subprocess
import sys
import time

import psutil

import conftest
import runtime

# The scripts' start: main.py's malloc settings in mode 'keep', then libc's
# malloc and free (no numpy: it asks the kernel for huge pages).
MALLOC_PREAMBLE = """if sys.argv[1] == 'keep':
  import runtime
  assert runtime.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
"""

# Mallocs, fills and frees 100 MB (as XLA does with a step's buffers), then
# counts the page faults of doing it again (huge pages would hide them).
REUSE = """
import ctypes, resource, sys
""" + MALLOC_PREAMBLE + """def fill_and_free():
  block = libc.malloc(100 << 20)
  ctypes.memset(block, 1, 100 << 20)
  libc.free(block)
fill_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run_fresh(script, mode):
  """`script` in a fresh process (malloc's settings hold for a whole one),
  with no malloc setting of the environment's."""
  env = {k: v for k, v in os.environ.items()
         if k not in runtime.USER_MALLOC_SETTINGS and k != 'GLIBC_TUNABLES'}
  result = subprocess.run([sys.executable, '-c', script, mode],
                          cwd=conftest.ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  return result


def test_freed_memory_is_reused_without_page_faults():
  faults = {mode: int(_run_fresh(REUSE, mode).stdout.split()[-1])
            for mode in ('default', 'keep')}
  # 100 MB is 25,600 pages of 4 KiB: glibc unmaps the block and the kernel
  # faults every page in again, unless the memory is kept. (Where the
  # kernel backs every mapping with 2 MiB pages, there are few faults
  # either way.)
  if '[always]' not in _read('/sys/kernel/mm/transparent_hugepage/enabled'):
    assert faults['default'] > 20_000, faults
  assert faults['keep'] < 1_000, faults


# Four threads malloc and free while they all live, then glibc's own
# statistics (on stderr) list the arenas: one per thread unless limited.
ARENAS = """
import ctypes, sys, threading
""" + MALLOC_PREAMBLE + """barrier = threading.Barrier(4)
def work():
  block = libc.malloc(1 << 20)
  barrier.wait(timeout=30)
  libc.free(block)
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
  thread.start()
for thread in threads:
  thread.join(timeout=30)
libc.malloc_stats()
"""


def test_every_thread_allocates_from_one_arena():
  # XLA's worker threads would each get an arena of their own, whose small
  # heaps glibc hands back to the kernel: a ResNet-20 step at batch 128
  # page-faulted some 94,000 times that way.
  arenas = {mode: _run_fresh(ARENAS, mode).stderr.count('Arena ')
            for mode in ('default', 'keep')}
  assert arenas['default'] > 1, arenas
  assert arenas['keep'] == 1, arenas


def _read(path):
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return ''


def test_a_malloc_setting_in_the_environment_wins(monkeypatch):
  monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '1000000')
  assert runtime.keep_freed_memory() is None
  monkeypatch.delenv('MALLOC_TRIM_THRESHOLD_')
  monkeypatch.setenv('MALLOC_ARENA_MAX', '4')
  assert runtime.keep_freed_memory() is None
  monkeypatch.delenv('MALLOC_ARENA_MAX')
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.trim_threshold=1000000')
  assert runtime.keep_freed_memory() is None


def test_process_age_counts_from_this_process_start():
  before = runtime.process_age_seconds()
  time.sleep(0.2)
  after = runtime.process_age_seconds()
  assert 0.15 < after - before < 2.0
  # psutil's figure rests on a boot time in whole seconds: within 1 s.
  coarse = time.time() - psutil.Process().create_time()
  fine = runtime._age_from_proc()
  assert 0 < fine and abs(fine - coarse) < 1.05
  # In hundredths of a second, the kernel's clock ticks (psutil's is finer).
  assert abs(fine * 100 - round(fine * 100)) < 1e-6
  assert abs(runtime.process_age_seconds() - fine) < 0.05
