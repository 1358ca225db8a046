"""Who may call the API: operators and automation, and what each role may do."""
