"""Scheduling requests ("agendamentos"): enriched and delivered to n8n."""
