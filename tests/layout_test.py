"""Tests of the project's shape: who imports whom, and whose warnings show."""

import ast
import os
import warnings

import pytest

import conftest

# Entry points and leaves that must not reach the training loop: eval and
# predict, the benchmarks, and the pieces the loop itself is built from.
NOT_THE_LOOP = ('inference', 'steps', 'reporting', 'data_sources',
                'input_pipeline', 'checkpointing', 'config_rules')
# The sweep command runs trials as processes and never needs JAX itself.
WITHOUT_JAX = ('sweep', 'sweep_runner', 'sweep_report', 'cli',
               'workdir_files')


def _module_files() -> dict:
  """{module name: path} of the top-level modules, bench/'s and configs."""
  files = {}
  for folder, prefix in ((conftest.ROOT, ''),
                         (os.path.join(conftest.ROOT, 'bench'), ''),
                         (os.path.join(conftest.ROOT, 'configs'),
                          'configs.')):
    for name in sorted(os.listdir(folder)):
      if name.endswith('.py') and name != '__init__.py':
        files[prefix + name[:-3]] = os.path.join(folder, name)
  return files


def _imports(path: str) -> set:
  """Every module name `path` imports, at its top or inside a function."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _reachable(start: str, files: dict) -> set:
  """Every module `start` imports, directly or through project modules."""
  seen, todo = set(), [start]
  while todo:
    for name in _imports(files[todo.pop()]):
      if name not in seen:
        seen.add(name)
        if name in files:
          todo.append(name)
  return seen


@pytest.mark.parametrize('module', NOT_THE_LOOP)
def test_eval_predict_and_the_loops_pieces_never_import_the_loop(module):
  assert 'train' not in _reachable(module, _module_files())


def test_no_benchmark_imports_the_loop():
  files = _module_files()
  bench = [n for n, p in files.items()
           if os.path.dirname(p).endswith('bench')]
  assert 'benchmark' in bench and 'contenders' in bench
  for name in bench:
    assert 'train' not in _reachable(name, files), name


@pytest.mark.parametrize('module', WITHOUT_JAX)
def test_the_sweep_command_does_not_import_jax(module):
  reached = _reachable(module, _module_files())
  assert not {n for n in reached if n == 'jax' or n.startswith('jax.')}


def test_project_modules_import_no_cycle():
  files = _module_files()
  for name in files:
    assert name not in _reachable(name, files), name


def test_every_project_module_shows_its_own_deprecation_warnings():
  # The filters pytest applies to this test are pytest.ini's plus the one
  # conftest builds; catch_warnings(record=True) keeps them.
  for module in ['steps', 'train', 'configs.default', 'contenders',
                 'layout_test'] + list(_module_files()):
    with warnings.catch_warnings(record=True) as caught:
      warnings.warn_explicit('old', DeprecationWarning, 'x.py', 1,
                             module=module, registry={})
    assert len(caught) == 1, module
  for module in ('jax._src.api', 'orbax.checkpoint', 'stepsx', 'xsteps'):
    with warnings.catch_warnings(record=True) as caught:
      warnings.warn_explicit('old', DeprecationWarning, 'x.py', 1,
                             module=module, registry={})
    assert not caught, module
