"""Serve a model over HTTP: `python -m lenet.serve ckpt_path=MODEL [host=127.0.0.1] [port=8000]`.

MODEL is a checkpoint of lenet.train (or its run dir) or a file of lenet.export (.onnx, .pt2). The routes: the
draw-a-digit page at /, POST /predict, GET /health, the API's docs at /docs. The work is lenet.inference.http_api.serve.
"""

from lenet.cli import command

main = command("serve")

if __name__ == "__main__":
    main()
