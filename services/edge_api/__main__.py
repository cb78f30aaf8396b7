from services.edge_api.server import main

main()
