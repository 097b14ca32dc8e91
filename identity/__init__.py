"""Accounts, sign-in, MFA, sessions, the eligibility roster, patient IDs, the OIDC provider.

identity imports neither messaging nor sms; they use identity's published interfaces.
"""
