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
  # A name from models.MODELS; model_kwargs go to its constructor (each model
  # takes dropout_rate and dtype, float32 or bfloat16; ResNets also stem,
  # widths, ...).
  config.model = 'cnn'
  config.model_kwargs = ml_collections.ConfigDict(
      {'dropout_rate': 0.0, 'dtype': 'float32'})
  # sgd (uses `momentum`; 0 means plain SGD), momentum (sgd, momentum > 0),
  # adam, adamw. weight_decay (sgd, momentum: added to the gradient; adamw:
  # decoupled) skips biases and normalization parameters.
  config.optimizer = 'sgd'
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 0.0
  # constant, cosine or warmup_cosine (linear warm-up for warmup_epochs).
  config.lr_schedule = 'constant'
  config.warmup_epochs = 0.0
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
  # On-device training augmentation: none, crop (pad 4 and crop back at
  # random), crop_flip (and mirror half the images; not for digits) or rrc
  # (a random box of each image resized back, and the mirror: fine-tuning).
  config.augment = 'none'
  # The augmentation's options: rrc takes scale (share of the area, default
  # 0.08,1) and ratio (width:height, default 0.75,1.333), e.g.
  # --config.augment_kwargs.scale=0.25,1.
  config.augment_kwargs = ml_collections.ConfigDict()
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
  return config
