"""OpenMaaS: an open-source Model-as-a-Service platform."""

__version__ = "0.1.0"
