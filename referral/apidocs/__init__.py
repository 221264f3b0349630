"""The published contract: ``/openapi.yaml``, and an offline API reference page at ``/docs`` (Redoc)."""
