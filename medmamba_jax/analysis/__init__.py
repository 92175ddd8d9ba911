"""Support code for the analysis commands (evaluate, predict, explain, robustness, flops, curves).

* ``cli``: shared error handling and the ``--workdir`` / ``--checkpoint`` model options;
* ``images``: reading PNG, JPEG and DICOM files into the form training saw;
* ``gradcam``: Grad-CAM by JAX autodiff through the NNX model;
* ``perturb``: the robustness study's image perturbations;
* ``plots``: every matplotlib figure the commands write;
* ``curves``: training histories read back from a workdir's metrics.jsonl;
* ``flop_count``: XLA cost analysis and a conv/matmul multiply-add count from the jaxpr.
"""
