"""sidecar-agent: a health-and-shutdown sidecar for Kubernetes pods."""

__version__ = "0.1.0"
IMAGE = f"sidecar-agent:{__version__}"
# The newest Kubernetes minor that `inject` and the webhook write pods for unless told otherwise: native sidecars
# are GA there and the preStop sleep action is on by default; an older cluster is named with --kubernetes-version.
DEFAULT_KUBERNETES = (1, 33)
