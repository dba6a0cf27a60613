"""The training stage: the grid as Ray Tune trials (``training``, on the driver), one trial's
training, checkpoints and results (``trainable``, in a Ray worker), what is measured on each
trained model (``evaluate``) and whether it is fit to be measured (``health``)."""
