"""The vocabulary every stage shares: findings and severities, reports, errors, the
``@gradlint.target`` declarations user files import. Plain data; no torch."""
