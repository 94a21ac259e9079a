"""The MNIST family: one record per data set, holding every fact lenet knows of it, and the one function that turns
its pixels into what a model sees. Torch-free, so that predicting with an exported .onnx file needs no torch.

A data set lenet can train on and predict for is a `DataSet` in `DATASETS`; docs/add-a-data-set.md walks through
adding one, and tests/test_data.py checks that each has every fact.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """How a dataset placed its objects in 28x28, as far as preparing a user's image goes
    (lenet.images.preparation)."""

    box: int  # the object's longer side, in pixels
    by_mass: bool  # centred by its centre of mass (MNIST) or by its bounding box
    strokes: bool  # thin strokes on paper: the paper's level judged around them, and what is fainter than the ink
    # zeroed; or an object that fills its frame (clothes): the background judged from the border, the texture kept


@dataclass(frozen=True)
class DataSet:
    """One data set of the MNIST family: every field is required, so a record lacking a fact fails where it is made."""

    name: str  # what users type: data=<name>, conf/data/<name>.yaml
    torchvision: str  # its class in torchvision.datasets: downloads it, names its folder (root/<class>/raw)
    mean: float  # of its training images' pixels in [0, 1]: data.mean's default
    std: float  # data.std's default
    test_counts: tuple[int, ...]  # its published test set's images per class ...
    test_grey: float  # ... and their mean grey level (0..1): how lenet recognises that test set in a data.root
    classes: tuple[str, ...]  # the names people expect, one per label 0..n-1
    layout: str  # how its images look (a name in LAYOUTS): a user's image is prepared to look the same

    def __post_init__(self):
        if not (self.layout in LAYOUTS and 0 <= self.mean < 1 and self.std > 0 and 0 < self.test_grey < 1):
            raise ValueError(f"data set {self.name}: its layout, mean, std or test_grey is missing or out of range")
        if len(self.classes) < 2 or len(self.classes) != len(self.test_counts):
            count = len(self.test_counts)
            raise ValueError(f"data set {self.name}: {len(self.classes)} class names for {count} classes")


# How images are laid out in 28x28, by the names data.layout takes: each data set's record names its own, and a folder
# of a user's own images (data=images) picks one.
LAYOUTS = {
    # Thin strokes on paper: digits, letters, drawings. LeCun et al.: MNIST's digits fit a 20x20 box keeping their
    # aspect ratio, then their centre of mass goes to the centre.
    "strokes": Layout(box=20, by_mass=True, strokes=True),
    # An object that fills its frame: clothes, things photographed. Xiao et al.: Fashion-MNIST's are trimmed, their
    # longest edge resized to 28; measured on its test set, 99.98% of them have a 27-28 pixel side and their bounding
    # boxes are centred (13.6 +- 0.2), their centres of mass are not.
    "object": Layout(box=28, by_mass=False, strokes=False),
}

DATASETS = {
    data.name: data
    for data in (
        DataSet(
            "mnist", "MNIST", mean=0.1307, std=0.3081,
            test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009), test_grey=0.1325,  # as published
            classes=tuple("0123456789"),  # torchvision says "0 - zero": the digit is the name
            layout="strokes",
        ),
        DataSet(
            "fashion_mnist", "FashionMNIST", mean=0.2860, std=0.3530,
            test_counts=(1000,) * 10, test_grey=0.2868,  # measured on Debian's copy
            classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
            layout="object",
        ),
        DataSet(
            "kmnist", "KMNIST", mean=0.1918, std=0.3483,
            test_counts=(1000,) * 10, test_grey=0.19,  # near its training set's 0.1918
            classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
            layout="strokes",  # Clanuwat et al. made KMNIST "in the MNIST format"; not measured here
        ),
    )
}  # fmt: skip


# data=images: a folder (or a CSV) of a user's own labelled images (lenet.training.image_folder). No record: its class
# names come from its folders, its mean and std from its training images, its layout from data.layout.
OWN_IMAGES = "images"
DATA_SET_NAMES = (*DATASETS, OWN_IMAGES)  # what data.dataset takes


def normalize(pixels, mean: float, std: float):
    """Float32 pixels 0..255 (a numpy array or a torch tensor) as a model sees them: (pixel / 255 - mean) / std.

    Computed as pixel * (1 / (255 std)) - mean / std, both factors rounded to float32 by the array library: training
    (lenet.training.datamodule) and every trained model (lenet.inference.trained_model) call this, so an image
    predicted on is normalized bit for bit as the training images were.
    """
    return pixels * (1 / (255 * std)) - mean / std
