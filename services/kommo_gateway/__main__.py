from services.kommo_gateway.server import main

main()
