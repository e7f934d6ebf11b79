"""Export: eager -> TorchScript / ONNX / TensorRT, per-format parity gate, Triton repository writer."""
