"""Recipes: one module per job a user runs, built from the components."""
