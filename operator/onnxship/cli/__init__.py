"""The `onnxship` command line."""
