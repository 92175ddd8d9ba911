r"""The paper's recipe for an image-folder data set: AdamW, lr 1e-4, wd 1e-4, 150 epochs, batch 64.

The paper, for the non-MedMNIST sets: AdamW with initial learning rate 0.0001, β1 0.9,
β2 0.999 (optax's defaults) and weight decay 1e-4, cross-entropy loss, 150 epochs, batch
size 64 and early stopping; "we did not apply any data augmentation strategy and
pre-training". The paper does not give the patience; this recipe stops after 20 epochs
without a better validation accuracy, and keeps the checkpoint with the best one.

    python train.py --config=configs/folder.py --workdir=runs/mydata \
        --config.data_dir=/data/mydata

`data_dir` holds train/<class>/*.png, val/<class>/*.png and test/<class>/*.png (read with
tensorflow-datasets' ImageFolder), resized to 224 once, at load time (bilinear).

Expected: Table 6 has MedMNIST only; Table 7's full MedMamba-T rows give, on CPN X-ray,
OA 97.1% and AUC 0.995 (``medmamba_jax.paper.table("table7_ablation")``).
"""

from medmamba_jax.configs import base


def get_config():
    c = base.get_config()
    c.dataset = "folder"
    c.data_dir = ""
    c.image_size = 224
    c.random_resized_crop = False
    c.random_flip = False
    c.autoaugment = False
    c.batch_size = 64
    c.num_epochs = 150
    c.learning_rate = 1e-4
    c.weight_decay = 1e-4
    c.lr_milestones = ()  # constant learning rate
    c.best_metric = "accuracy"
    c.early_stopping_patience = 20
    return c
