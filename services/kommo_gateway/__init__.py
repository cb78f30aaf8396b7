"""The one place that talks to Kommo: OAuth tokens, the shared rate limit, and every call."""
