"""Probe mode: a real backward pass of the user's model that confirms or refutes each
prediction. Imports torch."""
