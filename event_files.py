"""TensorBoard event files: writing them, and keeping them consistent with
the checkpoint a run resumes.

`SummaryWriter` writes scalars and hyperparameters with tensorboard's own
pure-Python record writer, and hands every scalar to the run's experiment
trackers (trackers.py), if any.

A run killed after logging step 1200 but before checkpointing it resumes
from an earlier step and logs those steps again. Before it does,
`truncate_after` rewrites the workdir's event files without the events past
the restored step, so every (tag, step) point appears exactly once.
"""

import glob
import itertools
import os
import socket
import time
from typing import Any, Mapping, Optional

from absl import logging
from clu.internal import utils as clu_utils
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.tensorflow_stub import errors as record_errors
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as records
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer import record_writer
from tensorboard.util import tensor_util

# Distinguishes files of sessions that start in the same second in one
# process (tests), which would otherwise get the same name.
_FILE_COUNTER = itertools.count()


class SummaryWriter:
  """Scalars and hyperparameters to the log and TensorBoard event files.

  The events are what clu's SummaryWriter writes (scalars as float32 tensors
  of the scalars plugin, hyperparameters through the hparams plugin), the log
  lines what its LoggingWriter writes. We do not use clu.metric_writers
  because importing any part of it imports TensorFlow: about 3 s of a CPU
  run's start, for no other use.
  """

  def __init__(self, logdir: Optional[str], trackers=None):
    """Writes events in `logdir`; None: log lines only (other processes).
    `trackers` (trackers.Trackers) get every scalar too."""
    self._file = self._events = None
    self._trackers = trackers
    if logdir:
      # tensorboard's EventFileWriter would import TensorFlow for its file
      # system layer when TensorFlow is installed; its RecordWriter does not.
      os.makedirs(logdir, exist_ok=True)
      name = (f'events.out.tfevents.{int(time.time()):010d}.'
              f'{socket.gethostname()}.{os.getpid()}.{next(_FILE_COUNTER)}.v2')
      self._file = open(os.path.join(logdir, name), 'wb')
      self._events = record_writer.RecordWriter(self._file)
      self._write(event_pb2.Event(wall_time=time.time(),
                                  file_version='brain.Event:2'))

  def write_scalars(self, step: int, scalars: Mapping[str, Any],
                    log: bool = True):
    """Writes `scalars` at `step`; `log` also logs them in one line (False
    where the caller logs its own, shorter line)."""
    if log:
      logging.info('[%d] %s', step, ', '.join(
          f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
          for k, v in sorted(scalars.items())))
    if self._trackers is not None:
      self._trackers.write_scalars(step, scalars)
    if self._events is None:
      return
    metadata = scalar_metadata.create_summary_metadata(display_name='',
                                                       description='')
    self._add(summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(
            tag=k, metadata=metadata,
            tensor=tensor_util.make_tensor_proto(np.float32(v)))
        for k, v in scalars.items()]), step)

  def write_hparams(self, hparams: Mapping[str, Any]):
    """Writes the config for TensorBoard's hparams tab (not to the log: the
    run's config.json has it)."""
    if self._events is not None:
      self._add(hparams_summary.hparams_pb(
          dict(clu_utils.flatten_dict(hparams))), 0)

  def _add(self, summary, step: int):
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary))

  def _write(self, event):
    self._events.write(event.SerializeToString())

  def flush(self):
    if self._events is not None:
      self._events.flush()

  def close(self):
    if self._events is not None:
      self._events.flush()
      self._file.close()
      self._file = self._events = None


def event_paths(logdir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*')))


def raw_records(path: str):
  """Yields the serialized events of one file, up to a partial record (a
  kill mid-write) or a corrupt one, where it stops.

  tensorboard's own loaders read records through TensorFlow whenever it is
  installed (tfds brings it), and importing it costs about 4.6 s of each
  resume; this uses tensorboard's pure-Python record reader instead.
  """
  reader = records.PyRecordReader_New(path)
  try:
    while True:
      try:
        reader.GetNext()
      except record_errors.OutOfRangeError:  # The end of the file.
        return
      except record_errors.DataLossError as e:
        logging.info('Stopped reading %s at a damaged record: %s', path,
                        e.message)
        return
      yield reader.record()
  finally:
    reader.file_handle.close()


def read_events(path: str) -> list[event_pb2.Event]:
  return [event_pb2.Event.FromString(r) for r in raw_records(path)]


def truncate_after(logdir: str, step: int) -> int:
  """Drops events with step > `step` from every event file in `logdir`.

  Returns:
    How many events were dropped.
  """
  dropped = 0
  for path in event_paths(logdir):
    raw = list(raw_records(path))
    keep = [r for r in raw if event_pb2.Event.FromString(r).step <= step]
    if len(keep) == len(raw):
      continue
    dropped += len(raw) - len(keep)
    tmp = path + '.truncating'
    with open(tmp, 'wb') as f:
      writer = record_writer.RecordWriter(f)
      for record in keep:
        writer.write(record)
      writer.flush()
      os.fsync(f.fileno())
    # `tmp` does not match the events glob, so a crash here loses nothing.
    os.replace(tmp, path)
  return dropped
