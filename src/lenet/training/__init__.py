"""Training LeNet: the network, its Lightning module, the data in memory, fit and test, and what a run records
(checkpoints, metrics.json, env.json, TensorBoard's hparams, MLflow and W&B)."""
