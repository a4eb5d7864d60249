"""What every service's routes share: the exact-JSON route class, problem responses, the request's user.

Below the services and the gateway, so that a route imports these without importing the app
that mounts it.
"""
