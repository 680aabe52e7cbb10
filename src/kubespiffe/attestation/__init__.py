"""Who is calling: verification of pod-bound ServiceAccount tokens and the pod they are bound to.

    attestor = PodAttestor(TokenVerifier(issuer=..., audience="kubespiffe", ...), client, pods)
    attested = await attestor.attest(token)   # AttestedPod(claims, pod) or TokenRejected (safe to log)

Modules: `token` (signature, issuer, audience, expiry; TokenReview as the fallback), `pod` (the bound pod
exists, is the same pod, has not finished; `PodAttestor` runs both steps).
"""
