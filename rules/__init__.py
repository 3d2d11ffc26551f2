"""gradlint's built-in rules, one rule a module.

Codes are grouped in hundreds by family: GL1xx gradient magnitude, GL2xx activations,
GL3xx initialization, GL4xx normalization, GL5xx skip and gating paths, GL6xx recurrence,
GL7xx gradient flow, GL9xx the tool itself.
"""
