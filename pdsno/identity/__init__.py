"""How controllers prove who they are: bootstrap tokens, challenges, credentials."""
