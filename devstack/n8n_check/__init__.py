"""`make n8n-check`: the shipped n8n workflow (examples/n8n/bridge-reply-workflow.json),
proven in a real n8n against the whole bridge.

Installs the pinned n8n from npm into `.n8n-check/` (once), starts local doubles of
OpenAI and Supabase, imports the workflow and its credentials, starts the bridge with the
Kommo sandbox, runs each path a customer's conversation takes and prints one line per
path, with what the model was sent. Not part of `make test`: the install takes minutes.
"""
