"""Tests for sweep_report.py: a trial's progress lines, the result table
(sweep.md's rounding, sweep.csv's digits) and the warning under it.

Whole sweeps, whose rows sweep_report collects, are tested in
sweep_runner_test.py.
"""

import csv
import json
import os

import sweep_report


def read_csv(workdir):
  with open(os.path.join(workdir, 'sweep.csv')) as f:
    return list(csv.DictReader(f))


class Clock:
  """time.monotonic for Progress: each call returns the next value."""

  def __init__(self, *times):
    self.times = list(times)

  def __call__(self):
    return self.times.pop(0)


def test_progress_lines_give_each_trial_its_log_time_result_and_eta(
    tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # Logs below it are shown relative to it.
  done, failed = tmp_path / 'done', tmp_path / 'failed'
  done.mkdir()
  failed.mkdir()
  (done / 'summary.json').write_text(json.dumps(
      {'best_chosen_on': 'validation', 'best_validation_accuracy': 0.812345,
       'best_test_accuracy': 0.9}))
  (failed / 'failed.json').write_text(json.dumps(
      {'error': 'error: loss or gradients are not finite at step 3'}))
  # Four trials, two at a time (the last does not start here): a starts at
  # 0 s and b at 5 s; a is done at 100 s, b fails at 120 s; c runs from 130
  # to 230 s.
  progress = sweep_report.Progress(4, parallel=2,
                                   clock=Clock(0, 5, 100, 120, 130, 230))
  a, b, c = 'lr=0.1', 'lr=0.2', 'lr=0.3'
  progress.start(a, str(done / 'train.log'))
  progress.start(b, 'sweep/lr=0.2/train.log')
  progress.end(a, 'done', str(done))
  progress.end(b, 'failed', str(failed))
  progress.start(c, '/elsewhere/lr=0.3/train.log')
  progress.end(c, 'done', str(done))
  assert capsys.readouterr().out.splitlines() == [
      '[sweep] 1/4 started, log: done/train.log',
      '[sweep] 2/4 started, log: sweep/lr=0.2/train.log',
      # The mean of the done trials times those left, over --parallel.
      '[sweep] 1/4 lr=0.1: done in 1 min 40 s, best validation accuracy '
      '0.8123; 3 left, about 2 min 30 s',
      # A failure is left out of the mean.
      '[sweep] 2/4 lr=0.2: failed in 1 min 55 s: error: loss or gradients '
      'are not finite at step 3; 2 left, about 1 min 40 s',
      '[sweep] 3/4 started, log: /elsewhere/lr=0.3/train.log',
      '[sweep] 3/4 lr=0.3: done in 1 min 40 s, best validation accuracy '
      '0.8123; 1 left, about 50 s']
  assert [sweep_report.format_duration(t) for t in (0.4, 59.6, 3600, 7321)] \
      == ['0 s', '1 min 00 s', '1 h 00 min', '2 h 02 min']


def test_table_shows_counts_as_integers_and_the_csv_keeps_every_digit(
    tmp_path):
  history = [{'epoch': 1.0, 'step': 10, 'test_accuracy': 0.5}]
  rows = [
      {'trial': 'lr=0.1', 'lr': '0.1', 'status': 'done',
       'test_loss': 1.23456789, 'test_accuracy': 0.123456789,
       'best_chosen_on': 'validation', 'best_validation_accuracy': 0.2,
       'best_test_accuracy': 0.123456789, 'best_epoch': 3.0,
       'wall_seconds': 12.3456, 'history': history},
      {'trial': 'lr=0.2', 'lr': '0.2', 'status': 'done', 'test_loss': 2.0,
       'test_accuracy': 0.1, 'best_chosen_on': 'validation',
       'best_validation_accuracy': 0.1, 'best_test_accuracy': 0.1,
       'best_epoch': 100 / 3, 'wall_seconds': 5.0, 'history': history},
      {'trial': 'lr=9', 'lr': '9', 'status': 'failed', 'error': 'error: x'}]
  table = sweep_report.write_reports(str(tmp_path), rows)
  assert table.splitlines()[2:] == [
      '| lr=0.1 | 0.1 | done | 1.2346 | 0.1235 | validation | 0.2000 | '
      '0.1235 | 3 | 12.3 |  |',
      '| lr=0.2 | 0.2 | done | 2.0000 | 0.1000 | validation | 0.1000 | '
      '0.1000 | 33.33 | 5.0 |  |',
      '| lr=9 | 9 | failed |  |  |  |  |  |  |  | error: x |']
  assert open(tmp_path / 'sweep.md').read() == table
  saved = {r['trial']: r for r in read_csv(str(tmp_path))}
  assert saved['lr=0.1']['test_accuracy'] == '0.123456789'
  assert float(saved['lr=0.2']['best_epoch']) == 100 / 3
  assert saved['lr=0.1']['best_epoch'] == '3.0'
  # A short run's only (partial) epoch: 4 steps of 1875.
  assert sweep_report.format_cell('best_epoch', 4 / 1875) == '0.002'


def test_ranking_on_the_test_set_is_warned_of_under_the_table(tmp_path):
  history = [{'epoch': 1, 'step': 10, 'test_accuracy': 0.5}]

  def row(name, chosen_on):
    return {'trial': name, 'status': 'done', 'best_chosen_on': chosen_on,
            'best_test_accuracy': 0.5, 'history': history}

  warning = ('warning: 1 of the 2 finished trials have no validation split, '
             'so their best checkpoints and this ranking are chosen on the '
             'test set (its accuracy is then optimistic); sweep with '
             '--config.validation_fraction=0.1 (in another --workdir) to '
             'choose on held-out training data')
  table = sweep_report.write_reports(
      str(tmp_path), [row('a', 'validation'), row('b', 'test'),
                      {'trial': 'c', 'status': 'pending'}])
  assert table.splitlines()[-2:] == ['', warning]
  assert open(tmp_path / 'sweep.md').read() == table
  assert sweep_report.ranking_warning([row('b', 'test')]).startswith(
      'warning: no trial has a validation split, so each best checkpoint '
      'and this ranking are chosen on the test set')
  table = sweep_report.write_reports(str(tmp_path), [row('a', 'validation')])
  assert 'warning' not in table and 'warning' not in open(
      tmp_path / 'sweep.md').read()


def test_a_preempted_or_diverged_summary_is_not_done(tmp_path):
  trial = tmp_path / 'trial'
  (trial / 'checkpoints').mkdir(parents=True)
  for reason, status in (('preempted', 'interrupted'),
                         ('diverged', 'interrupted'),
                         ('early_stopping', 'done'), ('finished', 'done')):
    (trial / 'summary.json').write_text(json.dumps({'stop_reason': reason}))
    assert sweep_report.trial_status(str(trial)) == status, reason
  (trial / 'summary.json').write_text(json.dumps({'stop_reason': 'diverged'}))
  (trial / 'failed.json').write_text(json.dumps({'error': 'not finite'}))
  assert sweep_report.trial_status(str(trial)) == 'failed'
