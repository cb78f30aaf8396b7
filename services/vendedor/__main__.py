import services.common.grpc_env  # noqa: F401  # before gRPC is loaded
from services.vendedor.server import main

main()
