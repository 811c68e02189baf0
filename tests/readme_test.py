"""Keeps the README honest: its command lines parse, its names exist."""

import ast
import os
import re
import shlex

import pytest

import conftest
from configs import default
import models
import optimizers

README = os.path.join(conftest.ROOT, 'README.md')
# absl's own flags, which every absl program accepts.
ABSL_FLAGS = {'verbosity', 'v', 'logtostderr', 'alsologtostderr', 'log_dir',
              'stderrthreshold', 'help', 'helpfull', 'flagfile'}
# The tables a name in the README's key table must come from.
TABLES = {'model': models.MODELS, 'optimizer': optimizers.OPTIMIZERS,
          'lr_schedule': optimizers.LR_SCHEDULES}


def _readme() -> str:
  with open(README) as f:
    return f.read()


def _defined_flags(script: str) -> set:
  """The flags `script` defines (flags.DEFINE_* / config_flags.DEFINE_*),
  read from its source, so both commands can be checked in one process."""
  names = set()
  tree = ast.parse(open(os.path.join(conftest.ROOT, script)).read())
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith('DEFINE_') and node.args
        and isinstance(node.args[0], ast.Constant)):
      names.add(node.args[0].value)
  return names | ABSL_FLAGS


def command_lines() -> list:
  """Every command in the README's sh blocks that runs main.py or
  sweep.py, as (script, arguments), with line continuations joined."""
  commands = []
  for block in re.findall(r'```sh\n(.*?)```', _readme(), re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      words = shlex.split(line, comments=True)
      for script in ('main.py', 'sweep.py'):
        if script in words:
          rest = words[words.index(script) + 1:]
          commands.append((script, [w for w in rest if w != '&']))
  return commands


def _has_key(config, dotted: str) -> bool:
  """Whether --config.DOTTED is accepted: a key of the config, or any key
  of one of its *_kwargs dicts (config_rules then checks it)."""
  first, _, rest = dotted.partition('.')
  if first.endswith('_kwargs') and first in config and rest.isidentifier():
    return True
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def test_the_readme_shows_both_commands():
  scripts = {script for script, _ in command_lines()}
  assert scripts == {'main.py', 'sweep.py'}
  assert len(command_lines()) >= 8


@pytest.mark.parametrize('script,args', command_lines())
def test_every_flag_and_config_key_of_a_readme_command_exists(script, args):
  accepted = _defined_flags(script)
  config = default.get_config()
  for arg in args:
    if not arg.startswith('--'):
      continue  # An image path given to --mode=predict.
    name, _, value = arg[2:].partition('=')
    if name.startswith('config.'):
      assert _has_key(config, name[len('config.'):]), arg
      continue
    assert name in accepted, f'{script} has no flag --{name}'
    if name == 'config':
      path = value.split(':', 1)[0]
      assert os.path.isfile(os.path.join(conftest.ROOT, path)), arg


def test_every_table_name_is_in_the_readme():
  readme = _readme()
  for table in TABLES.values():
    for name in table:
      assert f'`{name}`' in readme, name


@pytest.mark.parametrize('key', TABLES)
def test_the_key_table_lists_only_names_that_exist(key):
  rows = [line for line in _readme().splitlines()
          if line.startswith(f'| `{key}` |')]
  assert len(rows) == 1, key
  named = set(re.findall(r'`([^`]+)`', rows[0])) - {key}
  assert named and named <= set(TABLES[key]), named - set(TABLES[key])


def test_the_readme_reads_in_five_minutes():
  assert len(_readme().splitlines()) <= 250
