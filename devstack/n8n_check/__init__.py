"""`make n8n-check`: the shipped n8n workflow (examples/n8n/bridge-reply-workflow.json),
proven in a real n8n against the whole bridge.

Installs the pinned n8n from npm into `.n8n-check/` (once), starts local doubles of
OpenAI and Supabase and the bridge with the Kommo sandbox (sending `N8N_AUTH_HEADER`),
sets n8n up as examples/n8n/README.md says (its credentials, `BRIDGE_URL`), imports the
workflow, sends it forged envelopes (no header, a wrong one, and attacker callback URLs
with the right one: refused, and nothing reaches the attacker's listener), runs each path
a customer's conversation takes and prints one line per path, with what the model was
sent. Not part of `make test`: the install takes minutes.
"""
