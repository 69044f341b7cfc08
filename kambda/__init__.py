"""kambda: AWS Lambda, self-hosted on Kubernetes.

This package is the shared core (the Function spec model, naming, credentials, the CLI). The deployables are mapped
into it: `kambda.gateway` (gateway/), `kambda.runtime` (runtime/) and `kambda.operator` (operator/).
"""

__version__ = "0.1.0"
