"""SIGTERM/SIGINT handling: finish the step, save a checkpoint, exit 75.

The signal handler only records the signal; the training loop asks
`requested()` after each step, and that is where the log line is written
(logging from a signal handler can deadlock on the logging lock). A second
signal exits at once, with the same resumable exit code
(cli.EXIT_PREEMPTED): checkpoints are written to a temporary folder and
renamed when complete, so the last good one survives.
"""

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

import cli


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step (`step`)
  was saved."""

  def __init__(self, message: str = '', step=None):
    super().__init__(message)
    self.step = step


class PreemptionHandler:
  """Turns the first SIGTERM/SIGINT into a request to stop after the step."""

  def __init__(self):
    self.signum = None
    self._noticed = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum or signal.SIGTERM).name

  def requested(self, every_step: bool) -> bool:
    """Whether to stop now; all processes agree on the answer.

    With several processes the signal may reach only some, so they compare
    notes, which costs a collective: only at logging steps (`every_step`
    False), never in between.
    """
    if self.signum is not None and not self._noticed:
      self._noticed = True
      logging.warning('Got %s: stopping after this step with a checkpoint '
                      '(send it again to exit at once)', self.signal_name)
    if jax.process_count() == 1:
      return self.signum is not None
    if every_step:
      return False
    flags = multihost_utils.process_allgather(
        np.array(self.signum is not None))
    return bool(np.any(flags))

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      os._exit(cli.EXIT_PREEMPTED)  # pylint: disable=protected-access
    self.signum = signum
