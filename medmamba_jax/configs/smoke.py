r"""A seconds-long run for tests and CI: a 2-stage MedMamba at 32x32 for one epoch.

    python train.py --config=configs/smoke.py --workdir=/tmp/smoke --config.data_dir=DIR

DIR needs a (fake or real) pathmnist.npz; tests/conftest.py writes small ones.
"""

from medmamba_jax.configs import medmnist


def get_config():
    c = medmnist.get_config()
    c.depths = (1, 1)  # two stages compile in half the time of four and still merge patches once
    c.dims = (8, 16)
    c.image_size = 32
    c.batch_size = 8
    c.eval_batch_size = 32
    c.num_epochs = 1
    c.lr_milestones = ()
    c.log_every_steps = 1
    c.progress_bar = False
    # The paper's MedMNIST recipe uses no augmentation; CI still trains through the released
    # code's crop, flip and linear resize, so their keys and resumption stay tested.
    c.resize = "linear"
    c.random_resized_crop = True
    c.random_flip = True
    return c
