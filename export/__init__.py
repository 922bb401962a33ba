"""Export of the trained network to ONNX and TensorRT, and the runtime backends (issue 4)."""
