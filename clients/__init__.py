"""Clients of the server: Python, browser, game engines (issue 6)."""
