"""The streaming tracker: decoding, face detection, regression, test-time optimisation and the CLI."""

__version__ = "0.1.0"
