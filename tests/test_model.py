import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet.frame.errors import UserError
from lenet.training.module import check_one_cycle
from lenet.training.network import LeNet


class OriginalLeNet(nn.Module):
    """The model of the original script (../shared/seed/), verbatim."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def test_default_model_computes_exactly_what_the_seed_model_computes():
    original, ours = OriginalLeNet(), LeNet()
    ours.load_state_dict(dict(zip(ours.state_dict(), original.state_dict().values(), strict=True)))
    images = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(ours(images), original(images), rtol=0, atol=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in original.parameters()) == 44426


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_knob_builds_a_trainable_model(activation, pooling, batch_norm):
    model = LeNet(activation=activation, pooling=pooling, batch_norm=batch_norm, dropout=0.3)
    logits = model(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model) == batch_norm
    assert any(isinstance(m, nn.Dropout) for m in model)


def test_dropout_is_off_by_default_and_classes_are_configurable():
    assert not any(isinstance(m, nn.Dropout) for m in LeNet())
    assert LeNet(num_classes=3)(torch.randn(2, 1, 28, 28)).shape == (2, 3)


@pytest.mark.parametrize("steps", [4, 5, 6])
def test_a_one_cycle_warm_up_of_exactly_one_step_is_refused_in_one_line(steps):
    """torch's OneCycleLR divides by zero when pct_start x total_steps is 1 (0.2 of a 5-step run: a tiny data set
    with a large batch); every other length works."""
    scheduler = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.1, "pct_start": 0.2}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    if steps != 5:
        check_one_cycle(scheduler, steps)
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps, pct_start=0.2)
        return
    with pytest.raises(ZeroDivisionError):  # what the check spares the user
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps, pct_start=0.2)
    with pytest.raises(UserError, match=r"warm-up is exactly 1 of the run's 5 steps \(scheduler.pct_start=0.2\)"):
        check_one_cycle(scheduler, steps)
