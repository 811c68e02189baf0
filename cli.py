"""Command-line parsing shared by main.py and sweep.py: every bad flag or
config file becomes one `error: ...` line and exit status 2; the exit
statuses of both commands."""

import ast
import os
import re
import signal
import sys

from absl import flags

FLAGS = flags.FLAGS

# Exit statuses of main.py and sweep.py (and of a sweep's trials).
EXIT_FAILED = 1     # Training failed: divergence, a checkpoint write/restore.
EXIT_BAD_INPUT = 2  # Bad input or a busy workdir; nothing was changed.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal; run again to go on.

# --config.NAME_kwargs.KEY=VALUE: a keyword option for the constructor a
# config dict of that name feeds (model_kwargs: the model's). ml_collections
# takes only keys the config file already has; these dicts take any key the
# constructor does, and the config's rules check them against it.
_KWARGS_FLAG = re.compile(r'--config\.(\w+_kwargs)\.(\w+)(?:=(.*))?$',
                          re.DOTALL)
_kwargs_overrides: dict[str, str] = {}


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


def _interrupt_once(signum, frame):
  """The first SIGINT/SIGTERM raises KeyboardInterrupt (main.py turns it
  into one line); one more while that unwinds exits at once."""
  del frame
  if _interrupt_once.seen:
    print_line(f'stopped: {signal.Signals(signum).name} again; exiting now')
    os._exit(EXIT_PREEMPTED)  # pylint: disable=protected-access
  _interrupt_once.seen = True
  raise KeyboardInterrupt(signal.Signals(signum).name)


_interrupt_once.seen = False


def stop_on_interrupt():
  """Makes SIGINT (Ctrl-C) and SIGTERM outside the training loop (which
  has its own handler, preemption.py) stop the process with one line and
  EXIT_PREEMPTED instead of a traceback, however many arrive."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _interrupt_once)


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


def _pop_kwargs_flags(argv) -> tuple[list[str], dict[str, str]]:
  """argv without its --config.NAME_kwargs.KEY[=]VALUE flags, and those as
  {'NAME_kwargs.KEY': 'VALUE'} (the text as typed)."""
  rest, found, args = [], {}, iter(argv)
  for arg in args:
    match = _KWARGS_FLAG.match(arg)
    if not match:
      rest.append(arg)
      continue
    text = match.group(3)
    if text is None:
      text = next(args, None)
      if text is None:
        fail(f'{arg} has no value; accepted: {arg}=VALUE')
    found[f'{match.group(1)}.{match.group(2)}'] = text
  return rest, found


def parse_value(text: str, current=None):
  """A kwargs flag's text as a Python value: of the type of `current` when
  the key is in the config already, else a literal (number, tuple, True,
  ...) or, failing that, the text itself. Raises ValueError."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool) or text.lower() in ('true', 'false'):
    if text.lower() not in ('true', 'false'):
      raise ValueError('true or false')
    return text.lower() == 'true'
  if isinstance(current, (int, float)):
    try:
      return type(current)(text)
    except ValueError:
      raise ValueError(f'a {type(current).__name__}') from None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return text


def apply_kwargs_overrides(config, overrides: dict[str, str]):
  """Sets each 'NAME_kwargs.KEY': text of `overrides` in `config` (a locked
  ConfigDict is unlocked for it); exits with one line on a bad one."""
  for dotted, text in overrides.items():
    name, key = dotted.split('.', 1)
    if name not in config or not hasattr(config[name], 'unlocked'):
      fail(f"unknown config key '{name}' (in --config.{dotted}); the "
           f'accepted *_kwargs keys are: '
           f'{", ".join(k for k in config if k.endswith("_kwargs"))}')
    try:
      value = parse_value(text, config[name].get(key))
    except ValueError as e:
      fail(f'bad value {text!r} for --config.{dotted}; accepted: {e}')
    with config[name].unlocked():
      config[name][key] = value


def kwargs_overrides() -> dict[str, str]:
  """The --config.NAME_kwargs.KEY=VALUE flags parse_flags took, as
  {'NAME_kwargs.KEY': 'VALUE'} (sweep.py passes them on to every trial)."""
  return dict(_kwargs_overrides)


def parse_flags(argv):
  """absl's parsing of argv, with --config (if given) loaded and checked,
  and its --config.NAME_kwargs.KEY=VALUE flags applied.

  Returns:
    The arguments absl leaves over.
  """
  argv, kwargs = _pop_kwargs_flags(argv)
  # ml_collections reads the --config.KEY overrides from sys.argv itself.
  saved_argv, sys.argv = sys.argv, argv
  try:
    return _parse(argv, kwargs)
  finally:
    sys.argv = saved_argv


def _parse(argv, kwargs):
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if 'Error whilst parsing config file' in lines[0]:
      # ml_collections appends the traceback of get_config(); its last line
      # is the error itself.
      fail(f'cannot load --config={config_arg(argv)}: {lines[-1]}')
    fail(lines[0])
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
    apply_kwargs_overrides(FLAGS.config, kwargs)
  elif kwargs:
    fail(f'--config.{next(iter(kwargs))} needs --config=FILE')
  _kwargs_overrides.clear()
  _kwargs_overrides.update(kwargs)
  return rest
