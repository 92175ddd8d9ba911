r"""The paper's MedMNIST recipe for MedMamba-T/S/B: MedMNIST v2's settings, no augmentation.

The paper: "we followed the same training settings of MedMNISTv2 and MedViT without making
any modifications to the original settings", with 100 epochs, batch size 128, AdamW, initial
learning rate 0.001, decayed by 0.1 at epochs 50 and 75. MedMNIST v2's script resizes with
``Resize((224, 224), interpolation=NEAREST)``, normalises with mean 0.5 and std 0.5, applies
no augmentation, and keeps the checkpoint with the best validation AUC. So does this recipe.
The paper states no weight decay for MedMNIST; this recipe keeps the one it states for image
folders, 1e-4, on every parameter (see the README's recipe section).

    python train.py --config=configs/medmnist.py --workdir=runs/pathmnist \
        --config.dataset=pathmnist --config.data_dir=~/.medmnist --config.download=True

Expected, from Table 6 (MedMamba-T, test set): PathMNIST AUC 0.997, OA 0.953; the other nine
sets are in ``medmamba_jax.paper.table("table6_medmnist")``. ``--config.model=medmamba_s``
(0.997 / 0.955) or ``medmamba_b`` (0.999 / 0.964) give the other rows.

Images come at ``size`` (28 by default; 64, 128 or 224 exist) and are resized to 224.
ChestMNIST (multi-label) trains with a sigmoid/BCE loss; other sets with softmax CE.
"""

from medmamba_jax.configs import base


def get_config():
    c = base.get_config()
    c.dataset = "pathmnist"
    c.size = 28
    c.image_size = 224
    c.resize = "nearest"
    c.random_resized_crop = False
    c.random_flip = False
    c.autoaugment = False
    c.batch_size = 128
    c.num_epochs = 100
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.lr_milestones = (50, 75)
    c.lr_gamma = 0.1
    c.best_metric = "auc"
    c.early_stopping_patience = 0
    return c
