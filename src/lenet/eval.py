"""Test a checkpoint: `python -m lenet.eval ckpt_path=outputs/<run>/checkpoints/best.ckpt` (or a run dir).

The model and the data settings come from the checkpoint; `data.root` and `data.eval_batch_size` may be
overridden (e.g. the data now lives elsewhere). Writes `metrics.json` to its own run dir. The work is
lenet.training.fit.evaluate.
"""

from lenet.cli import command

main = command("eval")

if __name__ == "__main__":
    main()
