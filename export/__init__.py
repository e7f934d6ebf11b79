"""Export: eager -> TorchScript, parity gate, Triton repository writer."""
