"""Who the caller is: passwords and lockout, tokens and sessions."""
