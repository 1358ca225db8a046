"""Who may call the API and what each may do.

permissions: roles and permissions (deny by default). principal: the caller.
users: operator accounts, argon2id passwords, logins and lockout. sessions:
operator sessions (bearer tokens stored as SHA-256). api_keys: keys for
automation, with optional scopes. docs/auth.md describes them.
"""
