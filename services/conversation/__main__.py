import services.common.grpc_env  # noqa: F401  # before gRPC is loaded
from services.conversation.server import main

main()
