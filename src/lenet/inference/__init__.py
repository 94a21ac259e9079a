"""Using a trained model: one interface over a checkpoint, an .onnx or a .pt2 file; a user's images prepared as the
model's data set made its own; predict into a CSV, export with a parity check, serve over HTTP."""
