"""Regenerate the committed gRPC code from oip.proto (run from the repository root).

    .venv/bin/python operator/onnxship/serve/proto/generate.py

Two edits follow protoc, both for why the code is committed rather than built:
- the messages go into a private descriptor pool, because tritonclient registers the same
  protocol under the same names (package ``inference``) in the default pool, and a process that
  holds both (tests, the router, local mode) would otherwise fail with "duplicate symbol";
- the gencode/runtime version guards are dropped, so the committed code runs on every
  protobuf and grpcio that pyproject allows, not only on the protoc version that wrote it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # .../operator


def main() -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={ROOT}",
         f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", str(HERE / "oip.proto")],
        check=True,
    )
    pb2 = HERE / "oip_pb2.py"
    text = pb2.read_text()
    text = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\(.*?\n\)\n", "", text, flags=re.S)
    text = text.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
    text = text.replace(
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "POOL = _descriptor_pool.DescriptorPool()  # private: see generate.py\n"
        "DESCRIPTOR = POOL.AddSerializedFile(",
    )
    pb2.write_text(text)
    grpc_py = HERE / "oip_pb2_grpc.py"
    text = grpc_py.read_text()
    text = re.sub(r"\nGRPC_GENERATED_VERSION = .*?\n\n\n", "\n\n", text, flags=re.S)
    grpc_py.write_text(text)


if __name__ == "__main__":
    main()
