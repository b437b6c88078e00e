"""sidecar-agent: a health-and-shutdown sidecar for Kubernetes pods."""

__version__ = "0.1.0"
IMAGE = f"sidecar-agent:{__version__}"
