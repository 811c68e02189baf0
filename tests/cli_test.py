"""Tests for cli.py (the command lines themselves are run in main_test.py
and sweeps_test.py)."""

import io
import os
import sys

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
