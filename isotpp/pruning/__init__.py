"""Structured pruning: channel groups, plans, methods, TPP, OrthP, isometry, penalties, surgery, cost, the model file."""
