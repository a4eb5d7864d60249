"""Cloud Native Order Processor."""

__version__ = "0.1.0"
