"""A trained model put to use: loaded from a workdir or a model directory (``loaded_model``),
written as one file that runs without medmamba-jax (``standalone``), and scored on perturbed
images (``robustness_sweep``). The commands in cli/ are the command lines over these."""
