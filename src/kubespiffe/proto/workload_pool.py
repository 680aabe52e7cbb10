"""The descriptor pool that holds kubespiffe's compiled SPIFFE Workload API (workload_pb2).

Why not protobuf's default pool, as generated code normally uses: the spec's workload.proto has no
`package`, so its symbols (`X509SVIDRequest`, the `SpiffeWorkloadAPI` service, ...) are top-level
names, and any other compiled copy of the spec in the same process (py-spiffe's, go through its
`WorkloadApiClient`) defines the same names. The default pool refuses a second definition
("duplicate symbol"), whichever copy is imported second. Renaming ours (a `package` line) would
change the gRPC method paths every SPIFFE client calls, so the names stay and the pool is our own.

The pool answers every other lookup from the default pool, so `POOL` can also serve gRPC server
reflection for the whole server (health, reflection and the Workload API), not only for our file.
"""

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_database import DescriptorDatabase


def _as_proto(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


class _OverDefault(DescriptorDatabase):
    """Our own files first; any other (google/protobuf/struct.proto, health, ...) from the default pool."""

    def FindFileByName(self, file_name: str) -> descriptor_pb2.FileDescriptorProto:
        try:
            return super().FindFileByName(file_name)
        except KeyError:
            return _as_proto(descriptor_pool.Default().FindFileByName(file_name))

    def FindFileContainingSymbol(self, symbol: str) -> descriptor_pb2.FileDescriptorProto:
        try:
            return super().FindFileContainingSymbol(symbol)
        except KeyError:
            return _as_proto(descriptor_pool.Default().FindFileContainingSymbol(symbol))


_DATABASE = _OverDefault()
POOL = descriptor_pool.DescriptorPool(_DATABASE)


def add_serialized_file(serialized: bytes) -> FileDescriptor:
    """Register one generated file (the generated module's call, redirected here by scripts/gen-proto)."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    _DATABASE.Add(proto)
    return POOL.FindFileByName(proto.name)
