"""The web app for traders: server-rendered pages over the same use cases as the JSON API."""
