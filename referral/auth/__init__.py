"""OAuth 2.0 token endpoint, access-token middleware, scopes and tenancy checks."""
