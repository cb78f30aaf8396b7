import services.common.grpc_env  # noqa: F401  # before gRPC is loaded
from services.edge_api.server import main

main()
