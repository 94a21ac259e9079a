"""Export a checkpoint: `python -m lenet.export ckpt_path=PATH format=onnx|pt2 [output=FILE]`.

The exported file computes the checkpoint's logits from normalized images and carries what it takes to use it
alone (class names, mean, std, dataset); every export ends with a parity check against the checkpoint, written to
`<output>.json`. The work is lenet.inference.portable.export.
"""

from lenet.cli import command

main = command("export")

if __name__ == "__main__":
    main()
