"""The bridge's services. Each one runs as `python -m services.<name>`."""
