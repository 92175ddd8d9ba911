r"""The paper's MedMamba-X: MedMamba-T with the MedMNIST recipe plus AutoAugment.

The paper: MedMamba-X is MedMamba-T "trained exclusively using the Autoaugment strategy", to
measure the effect of data augmentation. Everything else is ``configs/medmnist.py``; the
ImageNet AutoAugment policy runs on the host at the source resolution, before the resize.

    python train.py --config=configs/medmnist_x.py --workdir=runs/pathmnist_x \
        --config.dataset=pathmnist --config.data_dir=~/.medmnist --config.download=True

Expected, from Table 6 (MedMamba-X, test set): PathMNIST AUC 0.999, OA 0.962.
"""

from medmamba_jax.configs import medmnist


def get_config():
    c = medmnist.get_config()
    c.model = "medmamba_t"
    c.autoaugment = True
    return c
