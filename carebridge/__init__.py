"""carebridge's shared plumbing: settings, database, keyring, audit log, HTTP shell, CLI.

The feature packages (identity, messaging, sms) build on these modules; only
``carebridge.app``, ``carebridge.models`` and ``carebridge.cli`` import the features, to
compose them. docs/architecture.md draws the picture.
"""
