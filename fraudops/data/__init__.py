"""Reading, generating and validating transaction tables."""
