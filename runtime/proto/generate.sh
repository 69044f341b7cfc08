#!/bin/sh
# Regenerates runtime/rpc/ from runtime/proto/runtime.proto (run from the repo root: `make proto`).
set -eu
python -m grpc_tools.protoc -I runtime/proto --python_out=runtime/rpc --pyi_out=runtime/rpc \
  --grpc_python_out=runtime/rpc runtime/proto/runtime.proto
# protoc emits a top-level import; the package lives at kambda.runtime.rpc.
sed -i 's/^import runtime_pb2 as runtime__pb2$/from . import runtime_pb2 as runtime__pb2/' runtime/rpc/runtime_pb2_grpc.py
