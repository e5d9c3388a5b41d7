"""The fleet tier: anchors that share one S3 bucket (docs/fleet.md). CPython only."""
