"""Measuring a trained model: the factoring evaluation (DESIGN §7)."""
