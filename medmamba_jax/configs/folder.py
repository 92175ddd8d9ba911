r"""The paper's recipe for an image-folder dataset: AdamW, lr 1e-4, wd 1e-4, 150 epochs, batch 64.

    python train.py --config=configs/folder.py --workdir=runs/mydata \
        --config.data_dir=/data/mydata

`data_dir` holds train/<class>/*.png, val/<class>/*.png and test/<class>/*.png (read with
tensorflow-datasets' ImageFolder). Training stops early after `early_stopping_patience`
epochs without a better validation accuracy.
"""

from medmamba_jax.configs import base


def get_config():
    c = base.get_config()
    c.dataset = "folder"
    c.data_dir = ""
    c.batch_size = 64
    c.num_epochs = 150
    c.learning_rate = 1e-4
    c.weight_decay = 1e-4
    c.lr_milestones = ()  # constant learning rate
    c.best_metric = "accuracy"
    c.early_stopping_patience = 20
    return c
