"""LeNet as in the original script: two conv + pool stages, then 256 -> 120 -> 84 -> classes."""

from torch import nn

# One for each of the names lenet.frame.keys declares (model.activation, model.pooling take those).
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
POOLINGS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class LeNet(nn.Sequential):
    """The original script's LeNet for 1x28x28 images; the defaults build exactly the original script's model.

    `batch_norm` adds BatchNorm after each conv and hidden linear layer; `dropout` acts on the
    two hidden linear layers.
    """

    def __init__(
        self,
        activation: str = "relu",
        pooling: str = "max",
        batch_norm: bool = False,
        dropout: float = 0.0,
        num_classes: int = 10,
    ):
        act, pool = ACTIVATIONS[activation], POOLINGS[pooling]

        def conv(c_in, c_out):
            norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
            return [nn.Conv2d(c_in, c_out, 5, bias=not batch_norm), *norm, act(), pool(2, 2)]

        def hidden(n_in, n_out):
            norm = [nn.BatchNorm1d(n_out)] if batch_norm else []
            drop = [nn.Dropout(dropout)] if dropout else []
            return [nn.Linear(n_in, n_out, bias=not batch_norm), *norm, act(), *drop]

        super().__init__(
            *conv(1, 6),  # 28 -> 24 -> 12
            *conv(6, 16),  # 12 -> 8 -> 4
            nn.Flatten(),
            *hidden(16 * 4 * 4, 120),
            *hidden(120, 84),
            nn.Linear(84, num_classes),
        )
