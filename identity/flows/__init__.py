"""Flows, one module per journey: sign-up, sign-in, sign-out, MFA, account pages."""
