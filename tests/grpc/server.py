"""A gRPC server (grpcio, no generated code) for interlock's gRPC test.

Prints its port on stdout, then serves until killed:
  /test.Echo/Unary      echoes the request bytes, trailing metadata x-trailer: kept
  /test.Echo/Fail       aborts with NOT_FOUND and details "no such thing"
  /test.Echo/Stream     streams the request bytes back 5 times
"""
import sys
from concurrent import futures

import grpc


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "kept"),))
    return request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def stream(request, context):
    for i in range(5):
        yield request + str(i).encode()


def ident(b):
    return b


handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
    "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
    "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
sys.exit(0)
