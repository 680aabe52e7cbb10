"""The kubespiffe command."""
