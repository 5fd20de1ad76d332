"""gRPC calls through interlock: python3 client.py PROXY_PORT AUTHORITY. Exits non-zero on
any unexpected result."""
import sys

import grpc

port, authority = sys.argv[1], sys.argv[2]
ident = lambda b: b
channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=(("grpc.default_authority", authority),))
grpc.channel_ready_future(channel).result(timeout=10)

unary = channel.unary_unary("/test.Echo/Unary", request_serializer=ident, response_deserializer=ident)
reply, call = unary.with_call(b"hello", timeout=10)
assert reply == b"hello", reply
trailers = dict(call.trailing_metadata())
assert trailers.get("x-trailer") == "kept", trailers
assert call.code() == grpc.StatusCode.OK

fail = channel.unary_unary("/test.Echo/Fail", request_serializer=ident, response_deserializer=ident)
try:
    fail(b"x", timeout=10)
    raise SystemExit("Fail did not fail")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
    assert e.details() == "no such thing", e.details()

stream = channel.unary_stream("/test.Echo/Stream", request_serializer=ident, response_deserializer=ident)
got = list(stream(b"s", timeout=10))
assert got == [b"s0", b"s1", b"s2", b"s3", b"s4"], got
print("grpc ok")
