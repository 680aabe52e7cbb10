"""Who is calling: verification of pod-bound ServiceAccount tokens and the pod they are bound to."""
