"""A user's images made into what a model of the MNIST family sees: 28x28 uint8, prepared as the model's data set made
its own. One code path for training on a folder of images (lenet.training), predict, export and serve
(lenet.inference)."""
