"""Compiles a .proto at run time for the grpcio peers beside this file.

grpc_tools.protoc writes the Python modules into a temporary directory; they
are imported, then the directory is removed (the modules stay loaded).
"""
import importlib
import os
import sys
import tempfile

from grpc_tools import protoc


def compile_proto(proto):
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    name = os.path.splitext(os.path.basename(proto))[0]
    with tempfile.TemporaryDirectory(prefix="anp-proto-") as out:
        args = ["protoc", "-I" + os.path.dirname(os.path.abspath(proto)), "-I" + include,
                "--python_out=" + out, "--grpc_python_out=" + out, os.path.basename(proto)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + proto)
        sys.path.insert(0, out)
        try:
            return importlib.import_module(name + "_pb2"), importlib.import_module(name + "_pb2_grpc")
        finally:
            sys.path.remove(out)
