"""Capture: from a model and its example inputs to gradlint's ``Graph`` (recording or
torch.export on the meta device, with torch.fx and module-order fallbacks), its parameters'
statistics, and the fusion of units written out in primitives. Imports torch."""
