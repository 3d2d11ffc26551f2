"""Lint: the ``Rule`` interface, the toolkit rules share, inline suppressions and the rule
documentation. The built-in rules themselves live in ``gradlint.rules``. Imports torch."""
