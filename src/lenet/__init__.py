"""LeNet on MNIST-family data with PyTorch Lightning and Hydra."""
