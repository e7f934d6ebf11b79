"""Code that runs inside Triton's Python backend, and in training where the
two must agree (one featurizer, one validator).

This folder is copied whole into every model version (`_vendor/pinrank/backend`),
so its modules import only the standard library, numpy, each other and the
client's tensor contract (`pinrank_client.schema`, `pinrank_client.validation`,
vendored beside it). The one exception is `ranker_runtime`, which imports the
runtime library (onnxruntime or torch) of the ranker a version ships, when it
loads. This file must stay import-free: it is vendored too."""
