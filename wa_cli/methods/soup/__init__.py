"""Soups: averages that choose their ingredients (Model Stock; greedy soups and WiSE-FT sweeps
scored by the user's evaluation function)."""
