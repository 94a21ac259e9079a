"""Train LeNet: `python -m lenet.train [overrides]`, or `-m` for a Hydra multirun sweep.

Returns the best validation accuracy, the value Hydra's sweepers (Optuna) optimize. The work is
lenet.training.fit.train.
"""

from lenet.cli import command

main = command("train")

if __name__ == "__main__":
    main()
