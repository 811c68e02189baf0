"""The config a training run saved in its workdir, for eval/predict overrides.

  python main.py --mode=eval --workdir=W --config=configs/workdir.py:W \
      --config.eval_batch_size=500
"""

import json
import os

from configs import default


def get_config(workdir):
  """configs/default.py updated with W/config.json (older runs saved fewer
  keys; the defaults fill in the rest)."""
  config = default.get_config()
  with open(os.path.join(workdir, 'config.json')) as f:
    config.update(json.load(f))
  return config
