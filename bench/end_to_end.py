"""End to end: the 10-epoch Fashion-MNIST run as a user runs it.

Whole processes, start to exit: the quick-start loop against main.py
(configs/fashion_mnist.py, evaluation after every epoch, checkpoints and
plots included), and main.py with the training set on the device.
"""

import time

import common
import contenders

CONFIG = 'configs/fashion_mnist.py'
# The main.py runs: (name, extra flags).
RUNS = (('main.py', ()),
        ('main.py, data_on_device', ('--config.data_on_device=true',)))


def measure_end_to_end(args):
  """Times the loop, then each of RUNS, for --epochs epochs; the table."""
  import workdir_files  # pylint: disable=g-import-not-at-top
  reference, accuracies = common.timed_reference_epochs(args.data_dir,
                                                        args.epochs)
  facts = common.child('machine_facts', args.data_dir)
  lines = [f'machine: {common.describe(facts)}; reference input: '
           f'{contenders.reference_input()}', '',
           '| run | whole process (s) | final test accuracy | vs reference |',
           '| --- | ---: | ---: | ---: |',
           f'| reference loop, {args.epochs} epochs | {reference:.1f} | '
           f'{accuracies[-1]:.4f} | 1.00x |']
  print(lines[-1], flush=True)
  for name, extra in RUNS:
    with common.scratch_workdir('e2e') as workdir:
      start = time.perf_counter()
      common.run_or_exit(common.main_command(
          workdir, CONFIG, args.data_dir, f'--config.num_epochs={args.epochs}',
          *extra))
      seconds = time.perf_counter() - start
      accuracy = workdir_files.read_json(
          workdir, workdir_files.SUMMARY,
          missing='main.py wrote no summary')['test_accuracy']
    lines.append(f'| {name}, {args.epochs} epochs | {seconds:.1f} | '
                 f'{accuracy:.4f} | {reference / seconds:.2f}x |')
    print(lines[-1], flush=True)
  common.report(lines, args.out)
