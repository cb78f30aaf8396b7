from services.scheduling.server import main

main()
