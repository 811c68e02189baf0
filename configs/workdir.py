"""The config a training run saved in its workdir, for eval/predict overrides.

  python main.py --mode=eval --workdir=W --config=configs/workdir.py:W \
      --config.eval_batch_size=500
"""

import json
import os

import ml_collections


def get_config(workdir):
  with open(os.path.join(workdir, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))
