"""Tests for cli.py (the command lines themselves are run in main_test.py
and sweeps_test.py)."""

import pytest

import cli


def test_config_arg_reads_both_flag_forms():
  assert cli.config_arg(['x.py', '--config=a.py', '--workdir=w']) == 'a.py'
  assert cli.config_arg(['x.py', '--config', 'b.py:arg']) == 'b.py:arg'
  assert cli.config_arg(['x.py', '--workdir=w']) == ''


def test_fail_is_one_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.fail('batch_size must be > 0, got 0')
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == 'error: batch_size must be > 0, got 0\n'
