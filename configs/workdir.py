"""The config a training run saved in its workdir, for eval/predict overrides.

  python main.py --mode=eval --workdir=W --config=configs/workdir.py:W \
      --config.eval_batch_size=500
"""

import workdir_files


def get_config(workdir):
  """configs/default.py updated with W/config.json (workdir_files.load_config,
  as eval and predict read it)."""
  return workdir_files.load_config(workdir)
