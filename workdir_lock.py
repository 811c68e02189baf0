"""One trainer per workdir: an advisory lock held for the whole run.

The lock is `fcntl.flock` on `<workdir>/.lock`. The kernel releases it when
the holder's process ends, however it ends (kill -9 included), so a stale
lock cannot block a resume. The file holds the holder's pid and host, for the
message a second trainer prints. Eval and predict only read and take no lock.
"""

import contextlib
import fcntl
import os
import socket

LOCK_NAME = '.lock'


class WorkdirBusy(RuntimeError):
  """Another trainer holds the workdir; the message names it."""


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir's lock for the body; raises WorkdirBusy at once if
  another process holds it."""
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
      raise WorkdirBusy(
          f'workdir {workdir} is in use by another trainer '
          f'({holder or "pid unknown"}); wait for it to end, stop it, or use '
          f'another --workdir') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode(),
              0)
    yield
  finally:
    os.close(fd)  # Closing releases the lock.
