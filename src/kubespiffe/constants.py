"""Names and bounds that several packages must agree on, written once.

Changing one of these changes a contract (an API group in stored objects, a Secret other replicas read,
the SPIFFE ID clients pin), so each lives here rather than retyped where it is used.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

# The kubespiffe.io API: WorkloadRegistration, ClusterWorkloadRegistration, FederatedTrustDomain.
GROUP: Final = "kubespiffe.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# kubespiffed's own SPIFFE ID is spiffe://<trust domain> + this path; the path is reserved for it.
SERVER_ID_PATH: Final = "/kubespiffe/kubespiffed"
SERVER_NAME: Final = "kubespiffed"
# The Secret holding the CA and JWT keys (its Lease is "<name>-leader").
AUTHORITY_SECRET: Final = "kubespiffe-authority"  # noqa: S105 (a Secret name)
ROTATE_ANNOTATION: Final = f"{GROUP}/rotate-requested"
# The audience of the projected ServiceAccount tokens pods present.
AUDIENCE: Final = "kubespiffe"
BUNDLE_CONFIGMAP: Final = "kubespiffe-bundle"

# SVID lifetimes a registration or a flag may ask for.
X509_TTL_MIN: Final = timedelta(minutes=1)
X509_TTL_MAX: Final = timedelta(days=30)
JWT_TTL_MIN: Final = timedelta(seconds=30)
JWT_TTL_MAX: Final = timedelta(hours=24)

# What one JWT-SVID request may ask for (issue 12): beyond these a request is refused as InvalidArgument
# by kubespiffed and by the agent alike. Each audience is printable ASCII, so it cannot forge a log line.
JWT_AUDIENCE_MAX_COUNT: Final = 16
JWT_AUDIENCE_MAX_LENGTH: Final = 256
