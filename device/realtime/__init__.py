"""The OpenAI Realtime API (GA protocol): events, session transport, ephemeral keys."""
