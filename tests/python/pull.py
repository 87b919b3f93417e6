"""A host written in another language: pull a configuration from Cairn with
nothing but grpcio and server reflection (no Cairn stubs, no .proto file).

    python3 tests/python/pull.py HOST:PORT MAC

Prints `key=value<TAB>source` per setting, then `host <DN>`.
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    target, mac = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(target)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    if "cairn.v1.Config" not in services:
        print(f"no cairn.v1.Config among {services}", file=sys.stderr)
        return 1
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("cairn.v1.Config")
    method = svc.methods_by_name["Pull"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    pull = channel.unary_unary(
        "/cairn.v1.Config/Pull",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    request = request_cls()
    request.identity.macs.append(mac)
    try:
        response = pull(request, timeout=10)
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    for s in response.settings:
        print(f"{s.key}={s.value}\t{s.source}")
    print(f"host {response.host_dn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
