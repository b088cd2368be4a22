"""dacdr: cross-domain recommendation to cold-start users with two-step domain-aware cross-attention."""

__version__ = "0.1.0"
