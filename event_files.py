"""Keeps TensorBoard event files consistent with the checkpoint a run resumes.

A run killed after logging step 1200 but before checkpointing it resumes from
an earlier step and logs those steps again. Before it does, `truncate_after`
rewrites the workdir's event files without the events past the restored step,
so every (tag, step) point appears exactly once.
"""

import glob
import os

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer import record_writer


def event_paths(logdir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*')))


def read_events(path: str) -> list[event_pb2.Event]:
  # Partially written trailing records (a kill mid-write) are skipped.
  return list(event_file_loader.EventFileLoader(path).Load())


def truncate_after(logdir: str, step: int) -> int:
  """Drops events with step > `step` from every event file in `logdir`.

  Returns:
    How many events were dropped.
  """
  dropped = 0
  for path in event_paths(logdir):
    raw = list(event_file_loader.RawEventFileLoader(path).Load())
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
