"""Output: reports as text, JSON, SARIF and GitHub annotations, baselines, and charts. Pure
functions of plain report data; no torch."""
