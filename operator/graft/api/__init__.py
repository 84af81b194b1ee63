"""The graft.dev/v1alpha1 API: pydantic models that are the one source of truth for the CRDs."""
