r"""The paper's MedMNIST recipe: MedMamba-T, AdamW, 100 epochs, lr x0.1 at epochs 50 and 75.

    python train.py --config=configs/medmnist.py --workdir=runs/pathmnist \
        --config.dataset=pathmnist --config.data_dir=~/.medmnist --config.download=True

Images come at `size` (28 by default; 64, 128 or 224 exist) and are resized to 224.
ChestMNIST (multi-label) trains with a sigmoid/BCE loss; other sets with softmax CE.
"""

from medmamba_jax.configs import base


def get_config():
    c = base.get_config()
    c.dataset = "pathmnist"
    c.size = 28
    c.batch_size = 128
    c.num_epochs = 100
    c.learning_rate = 1e-3
    c.lr_milestones = (50, 75)
    c.best_metric = "auc"
    return c
