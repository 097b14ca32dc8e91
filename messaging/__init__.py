"""Care teams, encrypted threads and messages, read state, retention and export."""
