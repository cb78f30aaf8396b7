"""The edge: the only HTTP the outside world talks to (Kommo webhooks, n8n, operators)."""
