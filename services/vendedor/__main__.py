from services.vendedor.server import main

main()
