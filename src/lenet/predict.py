"""Classify your own images: `python -m lenet.predict ckpt_path=MODEL inputs=IMAGE|FOLDER|'PATTERN'`.

MODEL is a checkpoint of lenet.train (or its run dir) or a file of lenet.export (.onnx, .pt2). Writes a CSV (path,
prediction, confidence, the top-k classes, error) as it goes, and with `preview=true` a grid of the images as the
model saw them. The work is lenet.inference.classify.predict.
"""

from lenet.cli import command

main = command("predict")

if __name__ == "__main__":
    main()
