"""Keys and signing: the X.509 CA, issued SVIDs, and persistence of key material in a Kubernetes Secret."""
