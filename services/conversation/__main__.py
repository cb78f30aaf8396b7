from services.conversation.server import main

main()
