import services.common.grpc_env  # noqa: F401  # before gRPC is loaded
from services.scheduling.server import main

main()
