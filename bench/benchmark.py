"""Side-by-side training benchmark on Fashion-MNIST (local IDX files).

  .venv/bin/python bench/benchmark.py                    # throughput table
  .venv/bin/python bench/benchmark.py --mode=tta         # time to accuracy
  .venv/bin/python bench/benchmark.py --mode=end_to_end  # 10 epochs, whole
  .venv/bin/python bench/benchmark.py --mode=xla_flags   # XLA_FLAGS options
  .venv/bin/python bench/benchmark.py --mode=malloc      # malloc settings
  .venv/bin/python bench/benchmark.py --mode=dtype       # float32, bfloat16
  .venv/bin/python bench/benchmark.py --mode=input       # input routes
  .venv/bin/python bench/benchmark.py --mode=memory      # peak RSS
  .venv/bin/python bench/benchmark.py --mode=resnet50    # ResNet-50 (GPU)
  .venv/bin/python bench/benchmark.py --mode=transfer    # fine-tuning
  .venv/bin/python bench/benchmark.py --mode=inference   # exported models
  .venv/bin/python bench/benchmark.py --mode=search      # TPE against grid
  .venv/bin/python bench/benchmark.py --mode=ablation    # recipe additions

This file is the one entry point and defines the flags; each mode lives in
the file MODES names, which says what it measures (common.py and windows.py
hold what the modes share). The child modes are this script run again in a
fresh process by a mode, for a process of its own (XLA reads its flags once
per process, malloc's settings and peak memory are the process's).

The parent process is not set up as main.py sets up the trainer: its
children inherit its environment, and the contenders other than the trainer
run with XLA's and glibc's defaults, as their users run them. Each process
that runs the trainer as main.py does calls `runtime.setup()` first (the
modes dtype and input, the children read_child and resnet50_child); the
modes that compare settings (throughput, xla_flags, malloc) choose each
child's XLA flags and malloc setting (windows.contender_window).
"""

import argparse
import os

import ablation
import augment_cost
import common
import contenders
import dtype
import end_to_end
import exported
import imbalance
import input_routes
import jpeg_input
import malloc
import memory
import resnet50
import search_vs_grid
import throughput
import time_to_accuracy
import transfer
import windows
import xla_flags
import zoo

# The modes a user runs.
MODES = {
    'throughput': throughput.measure_throughput,
    'tta': time_to_accuracy.measure_time_to_accuracy,
    'dtype': dtype.compare_dtypes,
    'input': input_routes.compare_input_routes,
    'memory': memory.measure_peak_memory,
    'xla_flags': xla_flags.compare_xla_flags,
    'malloc': malloc.compare_malloc_settings,
    'resnet50': resnet50.measure_resnet50,
    'end_to_end': end_to_end.measure_end_to_end,
    'transfer': transfer.measure_transfer,
    'jpeg_input': jpeg_input.compare_jpeg_input,
    'zoo': zoo.measure_zoo,
    'augment_cost': augment_cost.measure_augment_cost,
    'imbalance': imbalance.measure_imbalance,
    'inference': exported.measure_inference,
    'search': search_vs_grid.compare_search_and_grid,
    'ablation': ablation.measure_ablation,
}
# The modes that the modes above run in fresh processes.
CHILD_MODES = {
    'first_step': throughput.first_step,
    'reference_epochs': common.reference_epochs,
    'read_child': memory.read_child,
    'contender_child': windows.contender_child,
    'machine_facts': common.machine_facts,
    'resnet50_child': resnet50.resnet50_child,
}


def create_parser() -> argparse.ArgumentParser:
  """The benchmark's flags, for every mode."""
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='modes (file): ' + ', '.join(
          f'{name} ({fn.__module__}.py)' for name, fn in MODES.items()))
  parser.add_argument('--mode', default='throughput',
                      choices=[*MODES, *CHILD_MODES])
  parser.add_argument('--data_dir', default=common.DEFAULT_DATA)
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--window_images', type=int, default=12800)
  parser.add_argument('--warmup_images', type=int, default=3200)
  parser.add_argument('--only', nargs='*', help='contender kinds to run')
  parser.add_argument('--contender', default='reference')
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument('--config', default='configs/fast.py')
  parser.add_argument('--json', help='also write the table here')
  parser.add_argument('--out', help='throughput, resnet50, end_to_end, '
                      'transfer: '
                      'write the table as OUT.md (and OUT.json)')
  parser.add_argument('--folder_images', type=int, default=10000)
  parser.add_argument('--loading', default='stream')
  parser.add_argument('--batches', help='contender_child: batch sizes, '
                      'comma-separated')
  parser.add_argument('--evaluate', type=int, default=1,
                      help='contender_child: also time evaluation')
  parser.add_argument('--resnet_batch', type=int, default=256)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=30,
                      help='resnet50: steps per timed window')
  parser.add_argument('--flops', type=int, default=0,
                      help='resnet50_child: also report FLOPs per image')
  parser.add_argument('--keep_freed_memory', type=int, default=1,
                      help='contender_child: the trainer with main.py\'s '
                      'malloc settings')
  return parser


def main():
  args = create_parser().parse_args()
  os.chdir(contenders.ROOT)
  {**MODES, **CHILD_MODES}[args.mode](args)


if __name__ == '__main__':
  main()
