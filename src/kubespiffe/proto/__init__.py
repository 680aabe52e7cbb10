"""kubespiffe's own issuer API: the .proto and its generated code."""
