"""Test hooks that make a real process fail at a chosen point.

TRAINER_FAULT=<kind>:<point>:<step> in the environment turns one on:
  * kill:<point>:<step> SIGKILLs the process at `point` of step `step`;
    term:<point>:<step> sends it SIGTERM there (a preemption). Points: 'step' (after the step is dispatched), 'log' (after metrics are
    written), 'eval' (between evaluation batches), 'checkpoint' (while a
    checkpoint is being written), 'results' (after the final checkpoint,
    before summary.json and the plots).
  * int:start:0 sends SIGINT (Ctrl-C) once when main.py has imported its
    modules (start-up, before training); int2:start:0 sends another while
    the first one is being handled.
  * eio:restore:<step> makes restoring checkpoint `step` fail with an I/O
    error, as a flaky disk or network filesystem would.
  * raise:<point>:<step> raises FaultInjected there: a crash that in-process
    tests can catch (what a kill leaves, but the process lives on).
Unset (always, outside tests) they cost one dictionary lookup.
"""

import errno
import os
import signal

ENV = 'TRAINER_FAULT'


class FaultInjected(RuntimeError):
  """Raised by TRAINER_FAULT=raise:<point>:<step>."""


def enabled() -> bool:
  return ENV in os.environ


def trigger(point: str, step: int):
  """Sends SIGKILL or SIGTERM to this process, or raises FaultInjected, if
  TRAINER_FAULT asks for it at (point, step)."""
  fault = os.environ.get(ENV)
  if fault == f'raise:{point}:{step}':
    raise FaultInjected(f'injected fault at {point} {step} ({ENV})')
  if fault == f'kill:{point}:{step}':
    os.kill(os.getpid(), signal.SIGKILL)
  if fault == f'term:{point}:{step}':
    os.kill(os.getpid(), signal.SIGTERM)
  if fault in (f'int:{point}:{step}', f'int2:{point}:{step}'):
    try:
      os.kill(os.getpid(), signal.SIGINT)
      signal.pause()  # Until the handler runs (it raises).
    finally:
      if fault.startswith('int2'):  # Another while the first one unwinds.
        os.kill(os.getpid(), signal.SIGINT)
        signal.pause()


def io_error_if(point: str, step: int):
  """Raises EIO if TRAINER_FAULT=eio:<point>:<step>."""
  if os.environ.get(ENV) == f'eio:{point}:{step}':
    raise OSError(errno.EIO, f'injected I/O error ({ENV})')
