"""Time to accuracy: how soon a config reaches the quick-start loop's.

The quick-start loop trains --epochs epochs in a fresh process (its whole
wall time, process start included, and its final test accuracy are
measured); then `main.py --config=CONFIG` (default configs/fast.py) runs in
a fresh process and we note the wall time, from process start, of the first
epoch whose test accuracy reaches the loop's.
"""

import re
import subprocess
import time

import common
import contenders

# The trainer's end-of-epoch log line (reporting.end_epoch).
EPOCH_LINE = re.compile(r'epoch ([\d.]+) step \d+: .*\btest_accuracy ([\d.]+)')


def measure_time_to_accuracy(args):
  """Prints the loop's result, then when the config passed it."""
  reference_seconds, accuracies = common.timed_reference_epochs(
      args.data_dir, args.epochs)
  goal = accuracies[-1]
  print(f'reference: {args.epochs} epochs, whole process '
        f'{reference_seconds:.1f} s, final test accuracy {goal:.4f} (per '
        f'epoch: {", ".join(f"{a:.4f}" for a in accuracies)})', flush=True)
  with common.scratch_workdir('tta') as workdir:
    start = time.perf_counter()
    proc = subprocess.Popen(
        common.main_command(workdir, args.config, args.data_dir),
        cwd=contenders.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    reached = None
    for line in proc.stdout:
      match = EPOCH_LINE.search(line)
      if match and reached is None and float(match.group(2)) >= goal:
        reached = (time.perf_counter() - start, float(match.group(1)),
                   float(match.group(2)))
    proc.wait()
    total = time.perf_counter() - start
  if reached is None:
    print(f'{args.config}: never reached {goal:.4f} (whole run {total:.1f}'
          f' s)')
    return
  seconds, epoch, accuracy = reached
  print(f'{args.config}: test accuracy {accuracy:.4f} >= {goal:.4f} after '
        f'epoch {epoch:g}, {seconds:.1f} s from process start (whole run '
        f'{total:.1f} s)')
  print(f'time to reference accuracy: {seconds:.1f} s vs '
        f'{reference_seconds:.1f} s = {reference_seconds / seconds:.2f}x '
        f'faster')
