"""The runtime every service shares: settings, logging, gRPC server and clients, Redis."""
