"""The salespeople ("vendedores"): Kommo users plus custom ones, cached in Redis."""
