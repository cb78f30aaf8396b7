import services.common.grpc_env  # noqa: F401  # before gRPC is loaded
from services.kommo_gateway.server import main

main()
