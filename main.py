"""Command line: flags only, then hands over to train.py or inference.py.

  python main.py --workdir=W --config=configs/default.py [--config.KEY=VALUE]
  python main.py --mode=eval --workdir=W [--checkpoint=latest|best|STEP]
      [--split=test|validation]
  python main.py --mode=predict --workdir=W IMAGE [IMAGE ...]
"""

import contextlib
import logging as std_logging
import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import cli

FLAGS = flags.FLAGS

# What TensorFlow's C++ side prints to stderr on every import, whatever the
# log level (it loads before absl's C++ logging is set up).
_NATIVE_BANNERS = ('All log messages before absl::InitializeLog()',
                   'oneDNN custom operations are on',
                   'This TensorFlow binary is optimized',
                   'To enable the following instructions',
                   'rebuild TensorFlow with the appropriate compiler flags')

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, '
                    'plots and summary; rerunning with it resumes.')
config_flags.DEFINE_config_file(
    'config', None, 'Python file whose get_config() returns the config.',
    lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 '
                    'for a multi-process run (jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes in a '
                     'multi-process run.')
flags.DEFINE_integer('process_id', None, 'Index of this process, from 0.')
flags.DEFINE_integer('heartbeat_timeout_seconds', 60, 'In a multi-process '
                     'run, a process silent this long is declared dead and '
                     'the others exit with an error.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'export'],
                  'train (and resume); eval: score a checkpoint on --split; '
                  'predict: classify image files; export: write the '
                  'checkpoint as --formats files.')
flags.DEFINE_string('formats', 'jax,saved_model,onnx', 'For export: jax '
                    '(jax.export), saved_model (TensorFlow), onnx, '
                    'comma-separated.')
flags.DEFINE_string('eval_dir', '', 'For eval: score every image of '
                    'FOLDER/<class>/... instead of the run\'s --split.')
flags.DEFINE_string('output', '', 'For predict: also write the '
                    'predictions to this CSV file.')
flags.DEFINE_integer('top_k', 0, 'For predict: classes per file (0: 3 '
                     'printed, min(5, classes) in --output).')
flags.DEFINE_string('export_dir', '', 'For export: where the files go '
                    '(default WORKDIR/export).')
flags.DEFINE_enum('split', 'test', ['test', 'validation'], 'For eval: the '
                  'split to score (validation: runs that have one).')
flags.DEFINE_string('checkpoint', 'best', 'For eval/predict: best, latest '
                    'or a step number.')
flags.mark_flags_as_required(['workdir'])


def parse_flags(argv):
  """absl's parsing, with every bad flag reported in one line and exit 2."""
  argv = cli.parse_flags(argv)
  if FLAGS.config is None and FLAGS.mode == 'train':
    cli.fail('--config is required to train (e.g. '
             '--config=configs/fashion_mnist.py)')
  return argv


# Orbax's warning for a checkpoint saved without metrics while best_fn is set.
_UNSCORED_SAVE = 'Requested `tracked_metric`; did not provide metrics.'


def _quiet_library_logs(record) -> bool:
  """Drops INFO chatter of library internals: Orbax's (tens of lines per
  save) and JAX's backend probing (a failed TPU lookup on every start); and
  Orbax's warning at each checkpoint saved between evaluations (it has no
  score by design: the best one is chosen among the scored ones).

  Errors of Orbax and of the event loops it runs stay, in one line each
  unless --verbosity is 1 or more: a failed background save logs several,
  with tracebacks (about 300 lines), before our own one-line error names
  the failure and the checkpoints kept.
  """
  if (record.msg == _UNSCORED_SAVE and '/orbax/' in record.pathname and
      logging.get_verbosity() < 1):
    return False
  if ((record.name == 'asyncio' or '/orbax/' in record.pathname) and
      record.levelno >= std_logging.ERROR and logging.get_verbosity() < 1):
    record.msg, record.args = record.getMessage().split('\n', 1)[0], None
    record.exc_info, record.exc_text = None, None
  return record.levelno > std_logging.INFO or not any(
      part in record.pathname for part in ('/orbax/', '/jax/_src/'))


def _skip_closed_event_loop(hook):
  """An unraisable-exception hook that passes everything to `hook` but one
  kind: when a checkpoint write fails, Orbax closes the save's event loop and
  each of TensorStore's pending write callbacks then reports "Event loop is
  closed" (dozens of tracebacks that say nothing the error line does not)."""

  def skip(unraisable):
    if (unraisable.object is None and
        isinstance(unraisable.exc_value, RuntimeError) and
        str(unraisable.exc_value) == 'Event loop is closed'):
      return
    hook(unraisable)

  return skip


@contextlib.contextmanager
def _without_native_banners():
  """Runs the body with stderr (file descriptor 2) captured, then replays
  every line except TensorFlow's start-up banners."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors='replace').splitlines():
        if not any(banner in line for banner in _NATIVE_BANNERS):
          print(line, file=sys.stderr)


def main(argv):
  if len(argv) > 1 and FLAGS.mode != 'predict':
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_library_logs)
  sys.unraisablehook = _skip_closed_event_loop(sys.unraisablehook)
  with _without_native_banners():
    # pylint: disable=g-import-not-at-top
    import runtime
    runtime.setup(log=FLAGS.mode == 'train')  # Before JAX's backends start.
    import checkpointing
    import config_rules
    import data_sources
    import distributed
    import export
    import faults
    import inference
    import optimizers
    import preemption
    import train
    import warm_start
    import workdir_files
    # pylint: enable=g-import-not-at-top
  faults.trigger('start', 0)
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id, FLAGS.heartbeat_timeout_seconds)
  except distributed.DistributedError as e:
    cli.fail(str(e))
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
      return
    config = FLAGS.config or workdir_files.load_config(FLAGS.workdir)
    if FLAGS.mode == 'export':
      record, errors = export.export(config, FLAGS.workdir, FLAGS.checkpoint,
                                     FLAGS.formats, FLAGS.export_dir)
      for error in errors:
        cli.print_line(f'error: {error}')
      print(f'exported checkpoint {record["checkpoint_step"]} as '
            f'{", ".join(record["formats"]) or "nothing"} to '
            f'{FLAGS.export_dir or os.path.join(FLAGS.workdir, "export")}')
      if errors:
        sys.exit(cli.EXIT_FAILED)
      return
    if FLAGS.mode == 'eval':
      report = inference.evaluate_checkpoint(config, FLAGS.workdir,
                                             FLAGS.checkpoint, FLAGS.split,
                                             FLAGS.eval_dir)
      print(inference.format_report(report))
      return
    if len(argv) < 2:
      cli.fail('--mode=predict needs image files or folders: main.py '
               '--mode=predict --workdir=W IMAGE|FOLDER [...] '
               '[--output=preds.csv]')
    top_k = FLAGS.top_k
    if not top_k:
      classes = workdir_files.load_dataset_info(FLAGS.workdir)['num_classes']
      top_k = min(5 if FLAGS.output else 3, classes)
    lines, failed = inference.predict_files(config, FLAGS.workdir, argv[1:],
                                            FLAGS.checkpoint, top_k,
                                            FLAGS.output)
    print('\n'.join(lines))
    if failed:
      sys.exit(cli.EXIT_FAILED)
  except (config_rules.ConfigError, data_sources.DataError,
          checkpointing.IncompatibleCheckpointError,
          inference.InferenceError, optimizers.OptimizerError,
          warm_start.WarmStartError, export.ExportError,
          workdir_files.WorkdirError, workdir_files.WorkdirBusy) as e:
    cli.fail(str(e))
  except (train.DivergenceError, checkpointing.CheckpointError) as e:
    cli.print_line(f'error: {e}')
    sys.exit(cli.EXIT_FAILED)
  except preemption.Preempted as e:
    cli.print_line(f'preempted: {e}')
    sys.exit(cli.EXIT_PREEMPTED)


if __name__ == '__main__':
  cli.stop_on_interrupt()
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt as e:
    cli.print_line(f'stopped: {e or "SIGINT"} outside training steps; run '
                   f'the same command again to continue from the last '
                   f'checkpoint')
    sys.exit(cli.EXIT_PREEMPTED)
