r"""The released code's training (YubiaoYue/MedMamba ``train.py`` at 104beb3), for contrast.

That script trains on an image folder with ``RandomResizedCrop(224)`` (scale 0.08-1, bilinear)
and ``RandomHorizontalFlip()``, normalises with mean 0.5 and std 0.5, evaluates images resized
to 224 (bilinear), and uses Adam with lr 1e-4 (AdamW with no weight decay is Adam), batch 32,
100 epochs at a constant learning rate, keeping the checkpoint with the best validation
accuracy. It is not the paper's recipe (see configs/folder.py and configs/medmnist.py). One
difference remains: our folders are resized to 224 at load time, so the crop is drawn from
the 224x224 image rather than the original.

    python train.py --config=configs/upstream_train.py --workdir=runs/mydata_upstream \
        --config.data_dir=/data/mydata

No published table reports this recipe's results. For a MedMNIST set, add
``--config.dataset=pathmnist --config.data_dir=~/.medmnist``.
"""

from medmamba_jax.configs import folder


def get_config():
    c = folder.get_config()  # an image folder at 224, AdamW, lr 1e-4, constant, best accuracy kept
    c.resize = "linear"
    c.random_resized_crop = True
    c.random_flip = True
    c.batch_size = 32
    c.num_epochs = 100
    c.weight_decay = 0.0  # Adam
    c.early_stopping_patience = 0
    return c
