"""Apps built on chat, each one file that a test runs."""
