"""Conversations, the bot's state, and the durable queues between Kommo and n8n."""
