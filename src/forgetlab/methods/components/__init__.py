"""Pieces methods compose: a replay memory, parameter importances and their penalty, distillation."""
