"""Contact points and preferences, the notification dispatcher and outbox, Twilio."""
