"""Command-line parsing shared by main.py and sweep.py: every bad flag or
config file becomes one `error: ...` line and exit status 2; the exit
statuses of both commands."""

import os
import re
import sys

from absl import flags

FLAGS = flags.FLAGS

# Exit statuses of main.py and sweep.py (and of a sweep's trials).
EXIT_FAILED = 1     # Training failed: divergence, a checkpoint write/restore.
EXIT_BAD_INPUT = 2  # Bad input or a busy workdir; nothing was changed.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal; run again to go on.


def print_line(line: str):
  """Writes `line` to stderr in one write, so it stays a line of its own.

  After a failed checkpoint write, Orbax's and TensorStore's threads print
  tracebacks piece by piece through sys.stderr; a line printed there could
  land in the middle of one. One os.write of the whole line cannot be split
  (pipes keep writes under 4 KiB whole), and a piece another thread has
  buffered comes out after it, still whole.
  """
  try:
    fd = sys.stderr.fileno()
  except (AttributeError, OSError, ValueError):  # Replaced, as by pytest.
    sys.stderr.write(line + '\n')
    sys.stderr.flush()
    return
  os.write(fd, (line + '\n').encode(errors='replace'))


def fail(message: str):
  """Prints `error: message` and exits with EXIT_BAD_INPUT."""
  print_line(f'error: {message}')
  sys.exit(EXIT_BAD_INPUT)


def config_arg(argv) -> str:
  """The --config value as typed (absl has not stored it after an error)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def parse_flags(argv):
  """absl's parsing of argv, with --config (if given) loaded and checked.

  Returns:
    The arguments absl leaves over.
  """
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except SyntaxError as e:
    fail(f'cannot load --config={config_arg(argv)}: line {e.lineno}: '
         f'{e.msg}')
  except AttributeError as e:
    if "has no attribute 'get_config'" in str(e):
      fail(f'cannot load --config={config_arg(argv)}: it defines no '
           f'get_config() (a config file is Python with get_config() '
           f'returning an ml_collections.ConfigDict)')
    # ml_collections reports an unknown --config.KEY as an AttributeError
    # whose text is the quoted key plus a suggestion.
    key = re.search(r'[A-Za-z_][\w.]*', str(e))
    hint = re.search(r'Did you mean "([^"]+)"', str(e))
    fail(f"unknown config key '{key.group(0) if key else e}'" +
         (f" (did you mean '{hint.group(1)}'?)" if hint else '') +
         f'; the accepted keys are those of {config_arg(argv) or "--config"}')
  if FLAGS.config is not None:
    try:
      FLAGS.config.to_dict()  # A config file that failed to load raises here.
    except OSError as e:
      lines = [l.strip() for l in str(e).splitlines() if l.strip()]
      fail(f'cannot load --config={config_arg(argv)}: {lines[-1]}')
    except AttributeError:
      fail(f'cannot load --config={config_arg(argv)}: get_config() returned '
           f'{type(FLAGS.config).__name__}, not an ml_collections.ConfigDict')
  return rest
