"""Compression of decoder LLMs (ONNX Runtime GenAI folders): weight-only quantization streamed
tensor by tensor (``weights``), the generation gate (``gate``) and its prompts (``prompts``)."""
