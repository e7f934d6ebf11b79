"""The Triton model repository as both export (which writes it) and serving
(which loads, reloads and checks it) see it: model and file names, config
parameters, pbtxt reading and writing, which layout a directory holds, the
manifest and its hashes. Below export and serving; imports only the standard
library, protobuf/tritonclient's ModelConfig, and pinrank.backend.

`python_models/` holds the Triton Python-backend model.py sources, shipped
as package data and copied into each version by `pinrank export`."""
