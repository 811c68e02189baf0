"""Tests for cli.py (the command lines themselves are run in main_test.py
and sweeps_test.py)."""

import io
import os
import sys

import pytest

import cli
from configs import default


def test_config_arg_reads_both_flag_forms():
  assert cli.config_arg(['x.py', '--config=a.py', '--workdir=w']) == 'a.py'
  assert cli.config_arg(['x.py', '--config', 'b.py:arg']) == 'b.py:arg'
  assert cli.config_arg(['x.py', '--workdir=w']) == ''


def test_fail_is_one_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.fail('batch_size must be > 0, got 0')
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == 'error: batch_size must be > 0, got 0\n'


def test_print_line_stays_whole_when_another_thread_is_mid_line(monkeypatch):
  # A library thread's traceback is written to sys.stderr in pieces; the
  # error line must not land inside one (the CLI tests look for lines that
  # start with `error:`).
  read_end, write_end = os.pipe()
  stream = io.TextIOWrapper(os.fdopen(write_end, 'wb'), line_buffering=True)
  monkeypatch.setattr(sys, 'stderr', stream)
  stream.write('RuntimeError: ')  # Buffered: no newline yet.
  cli.print_line('error: could not write a checkpoint')
  stream.write('Event loop is closed\n')
  stream.close()
  with os.fdopen(read_end) as f:
    lines = f.read().splitlines()
  assert lines == ['error: could not write a checkpoint',
                   'RuntimeError: Event loop is closed']


def test_kwargs_flags_are_taken_out_in_both_forms():
  rest, found = cli._pop_kwargs_flags(
      ['main.py', '--config=c.py', '--config.model_kwargs.stem=small',
       '--config.model_kwargs.widths', '8,16', '--config.seed=1'])
  assert rest == ['main.py', '--config=c.py', '--config.seed=1']
  assert found == {'model_kwargs.stem': 'small', 'model_kwargs.widths': '8,16'}


@pytest.mark.parametrize('text,current,expected', [
    ('small', None, 'small'), ('8,16', None, (8, 16)), ('0.5', None, 0.5),
    ('True', None, True), ('false', None, False), ('2', 0.1, 2.0),
    ('3', 1, 3), ('true', 'x', 'true'), ('[8, 16]', None, [8, 16]),
])
def test_kwargs_values_take_the_type_they_have_or_read_as_literals(
    text, current, expected):
  value = cli.parse_value(text, current)
  assert value == expected and type(value) is type(expected)


def test_kwargs_overrides_reach_a_locked_config():
  config = default.get_config()
  config.lock()
  cli.apply_kwargs_overrides(config, {'model_kwargs.stem': 'small',
                                      'model_kwargs.dropout_rate': '0.25'})
  assert config.model_kwargs.stem == 'small'
  assert config.model_kwargs.dropout_rate == 0.25


@pytest.mark.parametrize('overrides,expected', [
    ({'model_kwargs.dropout_rate': 'lots'},
     "error: bad value 'lots' for --config.model_kwargs.dropout_rate; "
     "accepted: a float"),
    ({'modle_kwargs.stem': 'small'},
     "error: unknown config key 'modle_kwargs' (in --config.modle_kwargs."
     "stem); the accepted *_kwargs keys are: augment_kwargs, model_kwargs"),
])
def test_bad_kwargs_overrides_are_one_line(capsys, overrides, expected):
  config = default.get_config()
  config.model_kwargs.dropout_rate = 0.0  # As a config file may set it.
  with pytest.raises(SystemExit) as e:
    cli.apply_kwargs_overrides(config, overrides)
  assert e.value.code == cli.EXIT_BAD_INPUT
  assert capsys.readouterr().err == expected + '\n'
