"""auxray: auxiliary learning by implicit differentiation, at cluster scale."""
