"""Command line: flags only, then `train.train_and_evaluate(config, workdir)`.

  python main.py --workdir=W --config=configs/default.py [--config.KEY=VALUE]
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, '
                    'plots and summary; rerunning with it resumes.')
config_flags.DEFINE_config_file(
    'config', None, 'Python file whose get_config() returns the config.',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_library_info(record) -> bool:
  """Drops INFO chatter of Orbax's internals (tens of lines per save)."""
  return record.levelno > logging.INFO or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_logger().addFilter(_quiet_library_info)
  import checkpointing  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.ConfigError, input_pipeline.DataError,
          checkpointing.IncompatibleCheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except (train.DivergenceError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except train.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(train.EXIT_PREEMPTED)

if __name__ == '__main__':
  app.run(main)
