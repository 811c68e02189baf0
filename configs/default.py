"""The Flax quick start: MNIST from tfds, the 2-conv CNN, SGD with momentum."""

import ml_collections


def get_config():
  """Returns the default hyperparameters."""
  config = ml_collections.ConfigDict()
  # Data: a tfds name; data_dir '' means tfds's default folder, a folder of
  # MNIST-format IDX files is read directly, any other folder is tfds's.
  config.dataset = 'mnist'
  config.data_dir = ''
  # An image folder (data_dir/{train,test[,validation]}/<class>/<image>, or
  # data_dir/<class>/<image> with a test hold-out, see test_fraction) is
  # resized to image_size x image_size (0: the size most images share) and
  # made grayscale or RGB by channels (1, 3; 0: as the first image).
  # Unreadable files stop the run before training unless skip_bad_images
  # leaves them out.
  config.image_size = 0
  config.channels = 0
  # Image folders and predict: 1 resizes each whole image; below 1 (0.875 is
  # what torchvision's weights expect) resizes its shorter side to
  # image_size / eval_crop_pct and takes the centre crop. interpolation:
  # bilinear or bicubic.
  config.eval_crop_pct = 1.0
  config.interpolation = 'bilinear'
  config.skip_bad_images = False
  # auto (in memory up to 4 GiB of images, else read by random access from
  # files), memory or stream.
  config.data_loading = 'auto'
  # A hold-out of the training set on which the best checkpoint is chosen;
  # 0: none (then on the test set, as the quick start).
  config.validation_fraction = 0.0
  # A flat class folder (data_dir/<class>/<image>, no train/ and test/) gives
  # test_fraction of each class to the test set. split_seed draws that and
  # the validation hold-out, apart from `seed`, so that runs of other seeds
  # are compared on the same examples.
  config.test_fraction = 0.2
  config.split_seed = 0
  # Batches sent to the devices ahead of the step; data_on_device keeps the
  # training set on the (single-process) devices and gathers batches there.
  config.prefetch_batches = 2
  config.data_on_device = False
  # A name from models.MODELS, or an import path of your own Flax module
  # (package.module:ClassName or path/to/file.py:ClassName). model_kwargs
  # go to its constructor, only those set here or on the command line (the
  # table models take dropout_rate and dtype, float32 or bfloat16; ResNets
  # also stem, widths, ...).
  config.model = 'cnn'
  config.model_kwargs = ml_collections.ConfigDict()
  # sgd (uses `momentum`; 0 means plain SGD), momentum (sgd, momentum > 0),
  # adam, adamw. weight_decay (sgd, momentum: added to the gradient; adamw:
  # decoupled) skips biases and normalization parameters.
  config.optimizer = 'sgd'
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 0.0
  # constant, cosine, warmup_cosine (linear warm-up for warmup_epochs) or
  # plateau: constant, times plateau_factor each time the selection metric
  # (or early_stopping_metric) has not improved by more than
  # plateau_min_delta for plateau_patience epochs.
  config.lr_schedule = 'constant'
  config.warmup_epochs = 0.0
  config.plateau_patience = 3
  config.plateau_factor = 0.1
  config.plateau_min_delta = 0.0
  # Early stopping (patience 0: off): stop when early_stopping_metric (''
  # = the selection metric: validation_accuracy with a validation split,
  # else test_accuracy; or e.g. validation_loss) has not improved by more
  # than early_stopping_min_delta for that many epochs.
  config.early_stopping_patience = 0
  config.early_stopping_min_delta = 0.0
  config.early_stopping_metric = ''
  # Loss weight per class: '' (none), balanced (N / (classes * count)) or
  # one number per class, '1,1,10'.
  config.class_weights = ''
  # uniform: each epoch a permutation of the training set; balanced: each
  # batch drawn with replacement, every class equally likely.
  config.sampling = 'uniform'
  # The first weights: '' (random, from seed); a workdir of an earlier run
  # (its best checkpoint; W:latest, W:STEP) or a checkpoint folder; a
  # torchvision/timm ResNet state dict (.safetensors, .pth); or
  # hf-hub:ORG/REPO. init_exclude (a regex; '' = the classifier) leaves
  # what it matches freshly initialised. Used at step 0 only.
  config.init_from = ''
  config.init_exclude = ''
  # Pixels go to the model in [0, 1] (none), or minus a mean and over a std
  # per channel: imagenet (torchvision's values, which its weights and most
  # timm weights expect) or 'M1,M2,M3/S1,S2,S3'.
  config.normalize = 'none'
  # Regexes over parameter paths (e.g. 'layer1_0/conv1/kernel'; --verbosity=1
  # lists them in the model table): freeze trains nothing it matches and
  # keeps those BatchNorm layers on their running statistics;
  # lr_multipliers 'REGEX=FACTOR,...' scales their learning rate.
  config.freeze = ''
  config.lr_multipliers = ''
  # 0 turns each off; grad_accum_steps 1 updates every step.
  config.grad_clip_norm = 0.0
  config.label_smoothing = 0.0
  config.grad_accum_steps = 1
  # Parameter EMA (0: none); eval_with_ema evaluates, picks the best
  # checkpoint and predicts with the averaged parameters.
  config.ema_decay = 0.0
  config.eval_with_ema = False
  # On-device training augmentation, none or a comma-separated list of
  # steps applied in order: crop (pad 4 and crop back at random), crop_flip
  # (and mirror half the images; not for digits), rrc (a random box resized
  # back, and the mirror: fine-tuning), randaugment, random_erasing, mixup,
  # cutmix (both: one of them per batch), e.g. 'crop_flip,randaugment,mixup'.
  config.augment = 'none'
  # The steps' options, e.g. --config.augment_kwargs.mixup_alpha=0.2: rrc
  # scale (0.08,1), ratio (0.75,1.333); randaugment randaugment_ops (2),
  # randaugment_magnitude (9 of 10), randaugment_prob (0.5); random_erasing
  # erasing_prob (0.25), erasing_area (0.02,0.333), erasing_ratio
  # (0.3,3.3); mixup mixup_alpha (0.8); cutmix cutmix_alpha (1); both
  # mix_prob (1), mix_switch_prob (0.5: CutMix's share when both).
  config.augment_kwargs = ml_collections.ConfigDict()
  # Evaluate (each epoch, eval and predict) on the mean logits of each image
  # and its mirror; not for digits or text.
  config.eval_flip = False
  config.batch_size = 32
  config.eval_batch_size = 1000
  config.num_epochs = 10
  # -1: derived from num_epochs; a positive value stops there (short runs);
  # 0 evaluates the initial (e.g. pretrained) state and saves it as step 0.
  config.num_train_steps = -1
  config.seed = 0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 3
  # Experiment trackers beside TensorBoard (docs/trackers.md): '' (none),
  # mlflow, wandb or 'mlflow,wandb'. tracker_project names the MLflow
  # experiment and the W&B project; '' = the workdir's parent folder's name.
  config.trackers = ''
  config.tracker_project = ''
  return config
