r"""Cost of the checksums (and NaN/inf check) on a training checkpoint of MedMamba-T.

    python benchmarks/bench_checkpoint.py [--model medmamba_t] [--repeats 3] [--out FILE]

Saves and restores a 'latest' checkpoint (model state and AdamW state) as train.py does, with
``checkpointing.save`` and ``checkpointing.restore``, and times apart the part of each that
the checks add: copying the arrays to the host, hashing them (SHA-256) and, on save, looking
for NaN or inf. Medians of ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import median_seconds, record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--model", default="medmamba_t")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    import jax
    import optax
    from flax import nnx

    from medmamba_jax.model_files import digest, host_arrays, nonfinite_names
    from medmamba_jax.models import MedMamba, MedMambaConfig, count_params
    from medmamba_jax.training import checkpointing

    model = MedMamba(MedMambaConfig.preset(args.model, num_classes=9), rngs=nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    model_state, opt_state = nnx.state(model), nnx.state(optimizer)
    megabytes = sum(a.nbytes for state in (model_state, opt_state) for _, a in host_arrays(state)) / 2**20

    def checks(states) -> None:  # what save adds; restore does the same less the NaN/inf look
        for state in states:
            arrays = host_arrays(state)
            digest(arrays)
            nonfinite_names(arrays)

    with tempfile.TemporaryDirectory() as workdir:
        manager = checkpointing.managers(workdir)["latest"]
        steps = iter(range(1, 10**6))

        def save() -> None:  # each at a new step, as a run saves them
            step = next(steps)
            checkpointing.save(manager, step, model_state, {"step": step}, opt_state)

        save_s = median_seconds(save, args.repeats)
        restore_s = median_seconds(lambda: checkpointing.restore(manager, lambda meta: (model_state, opt_state)),
                                   args.repeats)
        manager.close()
    checks_s = median_seconds(lambda: checks((model_state, opt_state)), args.repeats)
    verify_s = median_seconds(lambda: [digest(host_arrays(state)) for state in (model_state, opt_state)], args.repeats)
    meta = {"host": platform.node(), "cpus": os.cpu_count(), "backend": jax.default_backend()}
    record({"model": args.model, "params": count_params(model), "checkpoint_mib": round(megabytes, 1),
            "save_s": round(save_s, 3), "save_checks_s": round(checks_s, 3),
            "restore_s": round(restore_s, 3), "restore_verify_s": round(verify_s, 3)}, [], meta, args.out)


if __name__ == "__main__":
    main()
